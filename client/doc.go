// Package client calls quotad from Go, and meters a product's HTTP
// handlers with it.
//
// A product's whole quota flow is three lines: a client, the middleware in
// front of the expensive handler, and, in the handler, a commit of what
// the work really cost:
//
//	qc := client.New("http://quotad:8080", os.Getenv("QUOTAD_KEY"))
//	mux.Handle("POST /chat", qc.Middleware(client.MiddlewareConfig{Subject: caller, Estimate: estimate})(chat))
//	client.ReservationFrom(r.Context()).Commit(r.Context(), quota.CommitRequest{Usage: &usage}) // in chat
//
// The middleware holds the estimate before the handler runs (so that
// concurrent requests of one subject cannot together spend past its
// limit), answers 429 with what is left and a Retry-After when the
// subject is out of quota, and after the handler settles whatever the
// handler left open: a failed handler (a status of 400 or more, or a
// panic) releases its hold, so a hold never leaks. EchoMiddleware does
// the same for echo.
//
// Client has a typed method for every route of quotad's REST contract,
// with the request and answer types of package quota (and, where quotad
// answers a shape of its own, such as a page of Subjects or of a Ledger,
// a type of this package with the same JSON; listings continue with the
// previous page's NextCursor). A problem+json answer is an *Error
// (errors.As; IsNotFound, IsConflict, ... ; errors.Is with
// quota.ErrNotFound and the other sentinels). Calls are retried with
// backoff on network errors and 503, and are idempotent so that a retry
// counts once: see New. When quotad stays unreachable, the FailMode
// decides whether checks and holds fail (FailClosed, the default) or pass
// unmetered (FailOpen, reported to OnFailOpen).
//
// Events follows a subject's changes live (its remaining credits falling
// as it spends), or every subject's with an admin key, over Server-Sent
// Events, resuming where it left off after a dropped connection.
package client
