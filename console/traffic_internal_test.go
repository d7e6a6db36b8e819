package console

import (
	"testing"
	"time"
)

func TestCountRequests(t *testing.T) {
	text := []byte(`# HELP quotad_http_requests_total HTTP requests answered.
quotad_http_requests_total{code="200",method="POST",route="/v1/consume"} 90
quotad_http_requests_total{code="429",method="POST",route="/v1/check"} 4
quotad_http_requests_total{code="503",method="POST",route="/v1/consume"} 6
quotad_http_requests_total{code="200",method="GET",route="/console/*"} 1000
quotad_http_requests_total{code="200",method="GET",route="/metrics"} 50
quotad_http_request_duration_seconds_count{method="POST",route="/v1/consume"} 96
`)
	total, refused := countRequests(text)
	if total != 100 || refused != 10 {
		t.Errorf("total %v refused %v, want 100 and 10", total, refused)
	}
}

func TestRates(t *testing.T) {
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	tr := newTraffic(nil)
	tr.add(sample{at: at, requests: 100, refused: 1})
	tr.add(sample{at: at.Add(5 * time.Second), requests: 600, refused: 11})
	tr.add(sample{at: at.Add(10 * time.Second), requests: 50, refused: 0}) // restarted: skipped
	rs := tr.rates()
	if len(rs) != 1 || rs[0].requests != 100 || rs[0].refused != 2 {
		t.Errorf("rates %+v", rs)
	}
}
