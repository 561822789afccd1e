package stats

import (
	"reflect"
	"strings"
	"testing"
)

func TestAnalyze(t *testing.T) {
	s, err := Analyze(strings.NewReader("The cat sat.\nThe cat's hat, the END\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Lines != 2 || s.Words != 8 {
		t.Fatalf("lines=%d words=%d, want 2 and 8", s.Lines, s.Words)
	}
	if s.Freq["the"] != 3 || s.Freq["cat's"] != 1 || s.Freq["end"] != 1 {
		t.Fatalf("unexpected frequencies: %v", s.Freq)
	}
}

func TestTop(t *testing.T) {
	s, _ := Analyze(strings.NewReader("b a c a b a"))
	got := s.Top(2)
	want := []WordCount{{"a", 3}, {"b", 2}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Top(2) = %v, want %v", got, want)
	}
	if len(s.Top(-1)) != 3 {
		t.Fatal("Top(-1) should return every word")
	}
}

func TestEmpty(t *testing.T) {
	s, err := Analyze(strings.NewReader(""))
	if err != nil || s.Lines != 0 || s.Words != 0 || len(s.Top(5)) != 0 {
		t.Fatalf("empty input: %+v %v", s, err)
	}
}
