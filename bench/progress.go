package bench

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Progress shows a scenario while it runs: one bar per scenario with the
// elapsed seconds and the live request rate on a terminal, a line every
// few seconds otherwise (logs stay readable).
type Progress struct {
	w        io.Writer
	tty      bool
	quiet    bool
	bar      *progressbar.ProgressBar
	label    string
	total    time.Duration
	prevN    int64
	prevT    time.Duration
	rate     float64
	elapsed  time.Duration
	lastLine time.Duration
}

// NewProgress writes to f (usually os.Stderr); quiet shows nothing.
func NewProgress(f *os.File, quiet bool) *Progress {
	return &Progress{w: f, tty: term.IsTerminal(int(f.Fd())), quiet: quiet}
}

// Start begins a bar for a run of d.
func (p *Progress) Start(label string, d time.Duration) {
	if p == nil || p.quiet {
		return
	}
	p.label, p.total, p.prevN, p.prevT, p.rate, p.elapsed, p.lastLine = label, d, 0, 0, 0, 0, 0
	if !p.tty {
		fmt.Fprintf(p.w, "  %s: running %s\n", label, d)
		return
	}
	p.bar = progressbar.NewOptions64(d.Milliseconds(),
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.describe()),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetElapsedTime(false),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
	)
}

func (p *Progress) describe() string {
	return fmt.Sprintf("%-28s %5.1fs/%-4s %9s req/s", p.label, p.elapsed.Seconds(), p.total.String(), fmtInt(p.rate))
}

// Update reports done responses after elapsed; the live rate is over the
// last half second or more.
func (p *Progress) Update(done int64, elapsed time.Duration) {
	if p == nil || p.quiet {
		return
	}
	p.elapsed = min(elapsed, p.total)
	if dt := elapsed - p.prevT; dt >= 500*time.Millisecond {
		p.rate = float64(done-p.prevN) / dt.Seconds()
		p.prevN, p.prevT = done, elapsed
	}
	if !p.tty {
		if elapsed-p.lastLine >= 5*time.Second {
			p.lastLine = elapsed
			fmt.Fprintf(p.w, "  %s: %2.0fs/%s %s req/s\n", p.label, elapsed.Seconds(), p.total, fmtInt(p.rate))
		}
		return
	}
	if p.bar != nil {
		p.bar.Describe(p.describe())
		_ = p.bar.Set64(min(elapsed.Milliseconds(), p.total.Milliseconds()))
	}
}

// Finish ends the bar with a one-line summary.
func (p *Progress) Finish(summary string) {
	if p == nil || p.quiet {
		return
	}
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
		fmt.Fprintln(p.w)
	}
	if summary != "" {
		fmt.Fprintf(p.w, "  %s: %s\n", p.label, summary)
	}
}

// Count shows a counting bar (seeding); call the returned function with
// done and total, and Finish at the end.
func (p *Progress) Count(label string) func(done, total int64) {
	if p == nil || p.quiet {
		return func(int64, int64) {}
	}
	p.label = label
	var lastLine time.Time
	return func(done, total int64) {
		if !p.tty {
			if time.Since(lastLine) >= 5*time.Second || done == total {
				lastLine = time.Now()
				fmt.Fprintf(p.w, "  %s: %s/%s\n", label, fmtInt(float64(done)), fmtInt(float64(total)))
			}
			return
		}
		if p.bar == nil {
			p.bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(label),
				progressbar.OptionSetWidth(30),
				progressbar.OptionShowCount(),
				progressbar.OptionSetElapsedTime(true),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
			)
		}
		_ = p.bar.Set64(done)
	}
}
