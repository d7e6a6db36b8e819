package api

import (
	"fmt"

	"github.com/quotad/quotad/quota"
)

// What the handlers accept of each field and promise of it, beyond its Go
// type, for the OpenAPI document: the one place these constraints are
// written down for it. A rule is keyed by "Type.field" (the Go type's
// name, the JSON field's name), or by "field" alone for every type with
// that field; "path:name" keys a path parameter. Its schema is merged into
// the field's; optional marks a field a request may leave out although
// the Go field has no omitempty (the handler defaults it); shape marks a
// value the handler checks item by item, answering a bad item in its own
// result (a batch's events): the document states only its items' types,
// which the whole request must get right. The bounds are
// the constants the validation itself uses. TestOpenAPIRulesUsed fails on
// a rule that names no field.

type rule struct {
	optional bool
	shape    bool
	schema   map[string]any
}

// Patterns are Go regexps, which validators of the document (and ECMA
// 262) read the same way for these.
var (
	subjectSchema = map[string]any{
		"pattern":     `^(anon|user):[A-Za-z0-9._@+-]{1,128}$`,
		"maxLength":   133,
		"description": `"anon:<id>" or "user:<id>", the id 1-128 characters of A-Z a-z 0-9 . _ @ + -`,
	}
	meterSchema = map[string]any{
		"pattern":     `^[a-z0-9_.-]{1,64}$`,
		"description": "1-64 characters of a-z 0-9 _ . -; \"credits\" when left out",
	}
	planNameSchema = map[string]any{
		"pattern":     `^[a-z0-9_.-]{1,64}$`,
		"description": "a plan name: 1-64 characters of a-z 0-9 _ . -",
	}
	modelSchema = map[string]any{
		"pattern":     `^[A-Za-z0-9._:/-]{1,64}$`,
		"description": "a model name: 1-64 characters of A-Z a-z 0-9 . _ : / -",
	}
	amountSchema = map[string]any{
		"minimum":     1,
		"maximum":     quota.MaxAmount,
		"description": fmt.Sprintf("units, 1-%d", quota.MaxAmount),
	}
	countSchema  = map[string]any{"minimum": 0} // used, reserved, remaining: exact integers
	tokensSchema = map[string]any{"minimum": 0, "maximum": quota.MaxAmount, "description": "0 when left out"}
	priceSchema  = map[string]any{"minimum": 0, "maximum": 1_000_000, "description": "USD per million tokens, 0-1000000, exact decimal; 0 when left out"}
	idemSchema   = map[string]any{
		"maxLength": 255,
		"pattern":   `^[^\x00-\x1f\x7f]*$`,
		"description": "at most 255 bytes of UTF-8 without control characters; a repeat for the same subject " +
			"within 24 hours answers the first result (409 if the request differs)",
	}
)

var (
	cursorSchema = map[string]any{"maxLength": 1024, "pattern": `^[A-Za-z0-9_-]*$`,
		"description": "next_cursor of the previous page, for the same query; the first page when left out"}
	pageSchema = map[string]any{"minimum": 1, "maximum": quota.MaxPage,
		"description": fmt.Sprintf("items per page, 1-%d; %d when left out", quota.MaxPage, quota.DefaultPage)}
)

// meterQuerySchema is a meter given as a query parameter.
func meterQuerySchema(description string) map[string]any {
	return map[string]any{"pattern": meterSchema["pattern"], "description": description}
}

var rules = map[string]rule{
	// Anywhere.
	"subject":   {schema: subjectSchema},
	"meter":     {schema: meterSchema},
	"used":      {schema: countSchema},
	"reserved":  {schema: countSchema},
	"remaining": {schema: countSchema},
	"limit": {schema: map[string]any{"minimum": 0, "maximum": quota.MaxLimit,
		"description": fmt.Sprintf("units per period, 0-%d", quota.MaxLimit)}},
	"idempotency_key": {schema: idemSchema},
	"mode": {schema: map[string]any{"enum": []string{quota.ModeRecord, quota.ModeEnforce},
		"description": `"record" (always applied, reports exceeded; the default) or "enforce" (applied only if it fits)`}},

	// Requests.
	"CheckRequest.amount": {schema: map[string]any{"minimum": 1, "maximum": quota.MaxAmount,
		"description": fmt.Sprintf("units, 1-%d; 1 when left out", quota.MaxAmount)}},
	"ConsumeRequest.amount": {schema: amountSchema},
	"ConsumeRequest.usage":  {schema: map[string]any{"description": "token usage, priced by the cost book; give either amount or usage"}},
	"ReserveRequest.amount": {schema: amountSchema},
	"ReserveRequest.ttl_seconds": {schema: map[string]any{"minimum": 1, "maximum": int64(quota.MaxReservationTTL.Seconds()),
		"description": fmt.Sprintf("1-%d; %d when left out", int64(quota.MaxReservationTTL.Seconds()), int64(quota.DefaultReservationTTL.Seconds()))}},
	"CommitRequest.amount": {schema: map[string]any{"minimum": 1, "maximum": quota.MaxAmount,
		"description": "the actual cost; the held amount when neither amount nor usage is given"}},
	"Usage.model":              {schema: modelSchema},
	"Usage.input_tokens":       {optional: true, schema: tokensSchema},
	"Usage.output_tokens":      {optional: true, schema: tokensSchema},
	"Usage.cache_write_tokens": {schema: tokensSchema},
	"Usage.cache_read_tokens":  {schema: tokensSchema},
	"batchRequest.events": {shape: true, schema: map[string]any{"minItems": 1, "maxItems": quota.MaxBatch,
		"description": "consume requests (see ConsumeRequest for their rules); an item that breaks one is answered in its result's error"}},
	"SubjectUpdate.plan": {schema: planNameSchema},
	"SubjectUpdate.limits": {schema: map[string]any{"description": "replaces all of the subject's own limits; " +
		"keys are meters (1-64 characters of a-z 0-9 _ . -)"}},
	"SubjectUpdate.cycle_anchor": {schema: map[string]any{"description": "months start on this day and time of day; years 1970-9999"}},
	"keyRequest.scope":           {schema: map[string]any{"enum": []string{ScopeService, ScopeAdmin}}},
	"keyRequest.name": {schema: map[string]any{"maxLength": 128, "pattern": `^[^\x00-\x1f\x7f-\x9f]*$`,
		"description": "a label: at most 128 characters without control characters"}},

	// Both directions: a Plan or a Price is the body of its PUT, which
	// takes the name from the path.
	"Plan.name": {optional: true, schema: planNameSchema},
	"Plan.limits": {schema: map[string]any{"minProperties": 1,
		"description": "at least one; keys are meters (1-64 characters of a-z 0-9 _ . -)"}},
	"Limit.limit":       {optional: true},
	"Limit.overage":     {schema: map[string]any{"description": "usage past the limit is recorded and reported, not refused"}},
	"Price.model":       {optional: true, schema: modelSchema},
	"Price.input":       {optional: true, schema: priceSchema},
	"Price.output":      {optional: true, schema: priceSchema},
	"Price.cache_write": {optional: true, schema: priceSchema},
	"Price.cache_read":  {optional: true, schema: priceSchema},

	// Answers.
	"MeterStatus.overage":      {schema: map[string]any{"description": "the limit lets usage pass it (recorded, not refused)"}},
	"MeterStatus.overage_used": {schema: map[string]any{"minimum": 0, "description": "usage past the limit"}},
	"Readiness.status": {schema: map[string]any{"enum": []string{"ok", "degraded", "unavailable"},
		"description": "degraded: one store is down and quotad serves from the other"}},

	// Listings and history: query parameters, then answers.
	"subjectsQuery.prefix": {schema: map[string]any{"maxLength": 133, "pattern": `^[A-Za-z0-9._@+:-]*$`,
		"description": "only subjects whose id starts with this (\"user:\", \"anon:abc\"); every subject when left out"}},
	"subjectsQuery.order": {schema: map[string]any{"enum": []string{quota.OrderID, quota.OrderUsed, quota.OrderShare},
		"description": "id (ascending; the default), used (the meter's usage this period, most first) or share (used over the limit, largest first)"}},
	"subjectsQuery.meter":  {schema: meterQuerySchema("the meter order=used and order=share sort by; \"credits\" when left out")},
	"subjectsQuery.cursor": {schema: cursorSchema},
	"subjectsQuery.limit":  {schema: pageSchema},
	"usageQuery.meter":     {schema: meterQuerySchema("\"credits\" when left out")},
	"usageQuery.days": {schema: map[string]any{"minimum": 1, "maximum": quota.MaxUsageDays,
		"description": fmt.Sprintf("days, today included, 1-%d; %d when left out", quota.MaxUsageDays, quota.DefaultUsageDays)}},
	"ledgerQuery.meter":       {schema: meterQuerySchema("only this meter's events; every meter's when left out")},
	"ledgerQuery.cursor":      {schema: cursorSchema},
	"ledgerQuery.limit":       {schema: pageSchema},
	"subjectList.next_cursor": {schema: map[string]any{"description": "the cursor of the next page; absent on the last"}},
	"ledgerList.next_cursor":  {schema: map[string]any{"description": "the cursor of the next page; absent on the last"}},
	"MeterShare.share": {schema: map[string]any{"nullable": true, "minimum": 0,
		"description": "used over limit (above 1 past the limit); null when the limit is 0"}},
	"UsageSeries.total":          {schema: countSchema},
	"DayUsage.day":               {schema: map[string]any{"format": "date", "description": "a UTC day"}},
	"LedgerEvent.kind":           {schema: map[string]any{"enum": []string{"consume", "reset"}}},
	"LedgerEvent.reservation_id": {schema: map[string]any{"description": "the reservation a commit settled"}},
	"LedgerEvent.period_start":   {schema: map[string]any{"description": "the start of the period the event counted in"}},

	// Path parameters.
	"path:subject": {schema: subjectSchema},
	"path:name":    {schema: planNameSchema},
	"path:model":   {schema: modelSchema},
	"path:id":      {schema: map[string]any{"maxLength": 512, "description": "a reservation id, or an API key's (an unknown one is a 404)"}},
}
