package httpx

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthAndProbe(t *testing.T) {
	srv := httptest.NewServer(Logged(Health("test")))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if err := Probe(addr, time.Second); err != nil {
		t.Fatalf("probe: %v", err)
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body["status"] != "ok" || body["service"] != "test" {
		t.Fatalf("unexpected body %v", body)
	}
}

func TestProbeFailsOnError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if err := Probe(strings.TrimPrefix(srv.URL, "http://"), time.Second); err == nil {
		t.Fatal("probe of a 404 should fail")
	}
}
