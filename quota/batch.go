package quota

import (
	"context"
	"sync"
)

// MaxBatch is how many consumes one batch may hold.
const MaxBatch = 1000

// batchWorkers bounds how many of a batch's subjects are consumed at
// once. Their consumes meet in the Redis counter's pipelining batcher,
// which merges them into as few script calls as it can.
const batchWorkers = 256

// BatchResult is one item's answer in a batch: Response, or Err.
type BatchResult struct {
	Response ConsumeResponse
	Err      error
}

// ConsumeBatch runs each request as Consume would and answers one result
// per request, in order. One subject's items run one after the other, in
// their order in the batch (so two enforce consumes of a subject, or a
// repeated idempotency key, answer as they would one request at a time);
// different subjects run concurrently. A bad item is its own result's
// error, not the batch's.
func (s *Service) ConsumeBatch(ctx context.Context, reqs []ConsumeRequest) ([]BatchResult, error) {
	if len(reqs) == 0 || len(reqs) > MaxBatch {
		return nil, Invalid("events", "must hold between 1 and %d consumes", MaxBatch)
	}
	out := make([]BatchResult, len(reqs))
	bySubject := map[string][]int{}
	var order []string
	for i, r := range reqs {
		if _, seen := bySubject[r.Subject]; !seen {
			order = append(order, r.Subject)
		}
		bySubject[r.Subject] = append(bySubject[r.Subject], i)
	}
	work := make(chan []int)
	var wg sync.WaitGroup
	for range min(batchWorkers, len(order)) {
		wg.Go(func() {
			for items := range work {
				for _, i := range items {
					out[i].Response, out[i].Err = s.Consume(ctx, reqs[i])
				}
			}
		})
	}
	for _, subject := range order {
		work <- bySubject[subject]
	}
	close(work)
	wg.Wait()
	return out, nil
}
