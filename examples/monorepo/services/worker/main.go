// worker: every -interval, turns each *.txt in INBOX into a JSON report (lines, words,
// sha256) in OUTBOX and removes it; serves GET /healthz and GET /v1/stats.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"example.com/mono/libs/httpx"
	"example.com/mono/libs/version"
)

type Config struct {
	Addr     string `json:"addr"`
	Inbox    string `json:"inbox"`
	Outbox   string `json:"outbox"`
	Interval string `json:"interval"`
}

type Report struct {
	File   string `json:"file"`
	Lines  int    `json:"lines"`
	Words  int    `json:"words"`
	SHA256 string `json:"sha256"`
}

// Analyze builds the report of one input.
func Analyze(name string, data []byte) Report {
	r := Report{File: name}
	sum := sha256.Sum256(data)
	r.SHA256 = hex.EncodeToString(sum[:])
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		r.Lines++
		r.Words += len(strings.Fields(sc.Text()))
	}
	return r
}

// ProcessOnce handles every *.txt in cfg.Inbox; returns how many it processed.
func ProcessOnce(cfg Config) (int, error) {
	files, err := filepath.Glob(filepath.Join(cfg.Inbox, "*.txt"))
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(cfg.Outbox, 0o755); err != nil {
		return 0, err
	}
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return n, err
		}
		out, _ := json.MarshalIndent(Analyze(filepath.Base(f), data), "", "  ")
		dst := filepath.Join(cfg.Outbox, strings.TrimSuffix(filepath.Base(f), ".txt")+".json")
		if err := os.WriteFile(dst, append(out, '\n'), 0o644); err != nil {
			return n, err
		}
		if err := os.Remove(f); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func loadConfig(path string) (Config, error) {
	cfg := Config{Addr: ":8081", Inbox: "/srv/data/inbox", Outbox: "/srv/data/outbox", Interval: "5s"}
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	return cfg, json.Unmarshal(b, &cfg)
}

func main() {
	cfgPath := flag.String("config", os.Getenv("WORKER_CONFIG"), "JSON config file")
	once := flag.Bool("once", false, "process the inbox once and exit")
	health := flag.Bool("healthcheck", false, "probe a running instance's /healthz and exit")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.String("worker"))
		return
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		log.Fatalf("config: %v", err)
	}
	if *health {
		if err := httpx.Probe(cfg.Addr, 2*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "unhealthy:", err)
			os.Exit(1)
		}
		return
	}
	if *once {
		n, err := ProcessOnce(cfg)
		fmt.Printf("processed %d file(s)\n", n)
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	interval, err := time.ParseDuration(cfg.Interval)
	if err != nil {
		log.Fatalf("config interval: %v", err)
	}
	var processed atomic.Int64
	go func() {
		for range time.Tick(interval) {
			n, err := ProcessOnce(cfg)
			if err != nil {
				log.Printf("process: %v", err)
			}
			processed.Add(int64(n))
		}
	}()
	mux := http.NewServeMux()
	mux.Handle("/healthz", httpx.Health("worker"))
	mux.HandleFunc("/v1/stats", func(w http.ResponseWriter, r *http.Request) {
		httpx.JSON(w, http.StatusOK, map[string]any{"processed": processed.Load(), "inbox": cfg.Inbox})
	})
	log.Printf("%s listening on %s, inbox %s every %s", version.String("worker"), cfg.Addr, cfg.Inbox, interval)
	log.Fatal(http.ListenAndServe(cfg.Addr, httpx.Logged(mux)))
}
