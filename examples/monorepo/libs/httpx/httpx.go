// Package httpx holds the HTTP helpers both services share: JSON replies, a request
// logger, a /healthz handler and the client side of the container HEALTHCHECK.
package httpx

import (
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"example.com/mono/libs/version"
)

// JSON writes v with the given status.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Health answers {"status":"ok","service":NAME,"version":...}.
func Health(name string) http.HandlerFunc {
	started := time.Now()
	return func(w http.ResponseWriter, r *http.Request) {
		JSON(w, http.StatusOK, map[string]any{
			"status": "ok", "service": name, "version": version.Version,
			"uptime_s": int(time.Since(started).Seconds()),
		})
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }

// Logged logs one line per request.
func Logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{w, http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Printf("%s %s %d %s", r.Method, r.URL.RequestURI(), rec.status, time.Since(start).Round(time.Microsecond))
	})
}

// Probe GETs http://ADDR/healthz and fails unless it answers 200 within timeout.
// The images' HEALTHCHECK runs the service binary with -healthcheck, which calls this
// (busybox has no reliable HTTP client inside containers).
func Probe(addr string, timeout time.Duration) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	c := http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthz answered %s", resp.Status)
	}
	return nil
}
