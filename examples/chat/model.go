package chat

import (
	"context"
	"fmt"
	"strings"
)

// Model is a language model as the chat service uses one.
type Model interface {
	// PromptTokens counts the input tokens a message will cost before it
	// is sent: what the service holds for the prompt.
	PromptTokens(message string) int64
	// Complete answers message, writing at most maxTokens, and reports
	// the tokens it really used.
	Complete(ctx context.Context, message string, maxTokens int64) (Completion, error)
}

// Completion is a model's answer and the tokens it used, as a provider's
// API reports them.
type Completion struct {
	Text         string
	InputTokens  int64
	OutputTokens int64
}

// FakeModel stands in for a provider: it answers at once, deterministically,
// and counts tokens as a quarter of the characters, the rule of thumb for
// English text.
type FakeModel struct {
	// ContextTokens is what every prompt carries besides the message
	// (system prompt, retrieved documents, history): 8,000 when 0, a
	// typical retrieval-augmented prompt, so that credits visibly fall.
	ContextTokens int64
	// Err, when set, is what every Complete returns: a provider outage.
	Err error
}

func (m FakeModel) context() int64 {
	if m.ContextTokens > 0 {
		return m.ContextTokens
	}
	return 8000
}

// tokens approximates the tokens of text.
func tokens(text string) int64 { return int64(len(text)+3) / 4 }

// PromptTokens implements Model.
func (m FakeModel) PromptTokens(message string) int64 { return m.context() + tokens(message) }

// Complete implements Model. The answer grows with the question, so that a
// long question costs more, and is cut at maxTokens as a provider's would.
func (m FakeModel) Complete(ctx context.Context, message string, maxTokens int64) (Completion, error) {
	if m.Err != nil {
		return Completion{}, m.Err
	}
	if err := ctx.Err(); err != nil {
		return Completion{}, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "You asked: %q. ", message)
	for i := 0; int64(b.Len()) < 4*(200+3*tokens(message)); i++ {
		b.WriteString(filler[i%len(filler)])
		b.WriteByte(' ')
	}
	text := b.String()
	if out := tokens(text); out > maxTokens {
		text = text[:4*maxTokens]
	}
	return Completion{Text: text, InputTokens: m.PromptTokens(message), OutputTokens: tokens(text)}, nil
}

var filler = []string{
	"That is a good question, and the honest answer depends on what you need.",
	"Here is how I would think about it, step by step.",
	"First, consider the constraints you are under and what success looks like.",
	"Second, weigh the options against those constraints rather than in the abstract.",
	"Finally, pick the simplest option that works, and revisit it when you learn more.",
}
