package api

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// The whole flow's routes: reservations and batch consumes (see
// quota.Holds and quota.Service.ConsumeBatch for their rules).

func (s *Server) flowRoutes() []route {
	return []route{
		{"POST", "/v1/consume/batch", ScopeService, "Record or enforce up to 1,000 consumes; one result per item, in order", batchRequest{}, batchAnswer{}, 200, s.consumeBatch},
		{"POST", "/v1/reservations", ScopeService, "Hold an estimate against a limit (201 granted, 200 refused)", quota.ReserveRequest{}, quota.ReserveResponse{}, 201, s.reserve},
		{"POST", "/v1/reservations/:id/commit", ScopeService, "Record a reservation's actual cost and free its hold", quota.CommitRequest{}, quota.CommitResponse{}, 200, s.commit},
		{"DELETE", "/v1/reservations/:id", ScopeService, "Free a reservation's hold without consuming", nil, quota.ReleaseResponse{}, 200, s.release},
	}
}

type batchRequest struct {
	Events []quota.ConsumeRequest `json:"events"`
}

// batchItem is one result of a batch: the consume answer, or the problem
// the single endpoint would have answered.
type batchItem struct {
	*quota.ConsumeResponse
	Error *Problem `json:"error,omitempty"`
}

type batchAnswer struct {
	Results []batchItem `json:"results"`
}

func (s *Server) consumeBatch(c echo.Context) error {
	var req batchRequest
	if err := readHot(c, fastBatch, nil, &req); err != nil {
		return err
	}
	res, err := s.svc.ConsumeBatch(c.Request().Context(), req.Events)
	if err != nil {
		return err
	}
	out := batchAnswer{Results: make([]batchItem, len(res))}
	for i := range res {
		if res[i].Err != nil {
			p := toProblem(res[i].Err, s.log, c.Request())
			out.Results[i].Error = &p
			if retryLater(res[i].Err) {
				c.Response().Header().Set("Retry-After", retryAfterOverloaded)
			}
		} else {
			out.Results[i].ConsumeResponse = &res[i].Response
		}
	}
	return writeHot(c, http.StatusOK, appendBatch, &out)
}

// Reserve and commit are on the hot path of every metered request (one
// of each per model call), so they read and write their JSON like check
// and consume (see fastjson.go).

func (s *Server) reserve(c echo.Context) error {
	var req quota.ReserveRequest
	if err := readHot(c, fastReserve, nil, &req); err != nil {
		return err
	}
	res, err := s.svc.Reserve(c.Request().Context(), req)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !res.Granted {
		status = http.StatusOK
	}
	return writeHot(c, status, appendReserve, &res)
}

func (s *Server) commit(c echo.Context) error {
	id, err := pathParam(c, "id")
	if err != nil {
		return err
	}
	var req quota.CommitRequest
	if c.Request().ContentLength != 0 { // no body: the held amount
		if err := readHot(c, fastCommit, nil, &req); err != nil {
			return err
		}
	}
	res, err := s.svc.Commit(c.Request().Context(), id, req)
	if err != nil {
		return err
	}
	return writeHot(c, http.StatusOK, appendCommit, &res)
}

func (s *Server) release(c echo.Context) error {
	id, err := pathParam(c, "id")
	if err != nil {
		return err
	}
	res, err := s.svc.Release(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}
