// Package stats counts lines, words and word frequencies in text.
package stats

import (
	"bufio"
	"io"
	"sort"
	"strings"
	"unicode"
)

// Summary is the result of analysing a text.
type Summary struct {
	Lines int
	Words int
	Chars int
	Freq  map[string]int
}

// WordCount is one entry of a frequency table.
type WordCount struct {
	Word  string
	Count int
}

// Analyze reads r to the end and returns its summary. Words are runs of letters,
// digits and apostrophes, compared case-insensitively.
func Analyze(r io.Reader) (Summary, error) {
	s := Summary{Freq: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		s.Lines++
		s.Chars += len([]rune(line)) + 1
		for _, w := range strings.FieldsFunc(line, func(c rune) bool {
			return !(unicode.IsLetter(c) || unicode.IsDigit(c) || c == '\'')
		}) {
			w = strings.ToLower(strings.Trim(w, "'"))
			if w == "" {
				continue
			}
			s.Words++
			s.Freq[w]++
		}
	}
	return s, sc.Err()
}

// Top returns the n most frequent words, ties broken alphabetically.
func (s Summary) Top(n int) []WordCount {
	out := make([]WordCount, 0, len(s.Freq))
	for w, c := range s.Freq {
		out = append(out, WordCount{w, c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Word < out[j].Word
	})
	if n >= 0 && n < len(out) {
		out = out[:n]
	}
	return out
}
