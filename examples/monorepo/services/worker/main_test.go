package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestAnalyze(t *testing.T) {
	r := Analyze("a.txt", []byte("hello world\nbye\n"))
	if r.Lines != 2 || r.Words != 3 || len(r.SHA256) != 64 {
		t.Fatalf("unexpected report %+v", r)
	}
}

func TestProcessOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Inbox: filepath.Join(dir, "in"), Outbox: filepath.Join(dir, "out")}
	if err := os.MkdirAll(cfg.Inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cfg.Inbox, "job1.txt"), []byte("one two three\n"), 0o644)
	os.WriteFile(filepath.Join(cfg.Inbox, "skip.bin"), []byte("x"), 0o644)
	n, err := ProcessOnce(cfg)
	if err != nil || n != 1 {
		t.Fatalf("ProcessOnce = %d, %v", n, err)
	}
	b, err := os.ReadFile(filepath.Join(cfg.Outbox, "job1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil || r.Words != 3 {
		t.Fatalf("bad report %s: %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Inbox, "job1.txt")); !os.IsNotExist(err) {
		t.Fatal("input should be removed")
	}
}
