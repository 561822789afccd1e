package main

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

func TestPrimes(t *testing.T) {
	if got, want := Primes(20), []int{2, 3, 5, 7, 11, 13, 17, 19}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Primes(20) = %v, want %v", got, want)
	}
	if len(Primes(2)) != 0 || len(Primes(100000)) != 9592 {
		t.Fatal("wrong prime counts")
	}
}

func TestHandlePrimes(t *testing.T) {
	for q, status := range map[string]int{"?n=10": 200, "?n=x": 400, "?n=-1": 400, "": 400} {
		rec := httptest.NewRecorder()
		handlePrimes(rec, httptest.NewRequest(http.MethodGet, "/v1/primes"+q, nil))
		if rec.Code != status {
			t.Errorf("%q: status %d, want %d", q, rec.Code, status)
		}
	}
}
