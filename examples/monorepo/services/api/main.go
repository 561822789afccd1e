// api: a small HTTP service. GET /healthz, GET /v1/primes?n=N (primes below N).
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"

	"example.com/mono/libs/httpx"
	"example.com/mono/libs/version"
)

// Primes returns the primes below n (sieve of Eratosthenes).
func Primes(n int) []int {
	if n < 3 {
		return []int{}
	}
	composite := make([]bool, n)
	var out []int
	for i := 2; i < n; i++ {
		if composite[i] {
			continue
		}
		out = append(out, i)
		for j := i * i; j < n; j += i {
			composite[j] = true
		}
	}
	return out
}

func handlePrimes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > 1_000_000 {
		httpx.JSON(w, http.StatusBadRequest, map[string]string{"error": "n must be an integer in [0, 1000000]"})
		return
	}
	p := Primes(n)
	httpx.JSON(w, http.StatusOK, map[string]any{"n": n, "count": len(p), "primes": p})
}

func main() {
	addr := flag.String("addr", envOr("API_ADDR", ":8080"), "listen address")
	health := flag.Bool("healthcheck", false, "probe a running instance's /healthz and exit")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	switch {
	case *showVersion:
		fmt.Println(version.String("api"))
		return
	case *health:
		if err := httpx.Probe(*addr, 2*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "unhealthy:", err)
			os.Exit(1)
		}
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", httpx.Health("api"))
	mux.HandleFunc("/v1/primes", handlePrimes)
	log.Printf("%s listening on %s", version.String("api"), *addr)
	log.Fatal(http.ListenAndServe(*addr, httpx.Logged(mux)))
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
