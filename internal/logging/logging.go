// Package logging builds haven's one logger tree: log/slog, text lines
// with key/value fields, a "sub" field naming the subsystem. Raft and
// memberlist log through hclog and the standard library's log; Hclog and
// the writer behind it bridge both into the tree, so an operator reads one
// stream with one set of levels.
package logging

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// LevelTrace is below slog's Debug, for raft's and memberlist's chattiest
// lines.
const LevelTrace = slog.Level(-8)

// ParseLevel reads a configured level: trace, debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q is not one of trace, debug, info, warn, error", s)
}

// New returns a root logger writing text lines to w at level and above.
func New(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.LevelKey {
				if l, ok := a.Value.Any().(slog.Level); ok && l <= LevelTrace {
					a.Value = slog.StringValue("TRACE")
				}
			}
			return a
		},
	}))
}

// Named is l for one subsystem.
func Named(l *slog.Logger, sub string) *slog.Logger { return l.With("sub", sub) }

// Discard logs nothing.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Hclog is l as an hclog.Logger, for hashicorp/raft.
func Hclog(l *slog.Logger) hclog.Logger { return &bridge{base: l, l: l} }

// bridge keeps the logger without the name (base), so that a nested name
// replaces the "sub" field instead of repeating it.
type bridge struct {
	base, l *slog.Logger
	name    string
	implied []any
}

func (b *bridge) named(name string) *bridge {
	return &bridge{base: b.base, l: b.base.With("sub", name), name: name, implied: b.implied}
}

var _ hclog.Logger = (*bridge)(nil)

func toSlog(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (b *bridge) Log(level hclog.Level, msg string, args ...any) {
	b.l.Log(context.Background(), toSlog(level), msg, formatArgs(args)...)
}

// formatArgs renders hclog.Fmt values ("servers", hclog.Fmt("%+v", s)),
// which raft uses and slog would print as the raw format and arguments.
func formatArgs(args []any) []any {
	var out []any
	for i, a := range args {
		f, ok := a.(hclog.Format)
		if !ok || len(f) == 0 {
			continue
		}
		format, ok := f[0].(string)
		if !ok {
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = fmt.Sprintf(format, f[1:]...)
	}
	if out == nil {
		return args
	}
	return out
}
func (b *bridge) Trace(msg string, args ...any) { b.Log(hclog.Trace, msg, args...) }
func (b *bridge) Debug(msg string, args ...any) { b.Log(hclog.Debug, msg, args...) }
func (b *bridge) Info(msg string, args ...any)  { b.Log(hclog.Info, msg, args...) }
func (b *bridge) Warn(msg string, args ...any)  { b.Log(hclog.Warn, msg, args...) }
func (b *bridge) Error(msg string, args ...any) { b.Log(hclog.Error, msg, args...) }

func (b *bridge) enabled(l hclog.Level) bool {
	return b.l.Enabled(context.Background(), toSlog(l))
}
func (b *bridge) IsTrace() bool { return b.enabled(hclog.Trace) }
func (b *bridge) IsDebug() bool { return b.enabled(hclog.Debug) }
func (b *bridge) IsInfo() bool  { return b.enabled(hclog.Info) }
func (b *bridge) IsWarn() bool  { return b.enabled(hclog.Warn) }
func (b *bridge) IsError() bool { return b.enabled(hclog.Error) }

func (b *bridge) ImpliedArgs() []any { return b.implied }

func (b *bridge) With(args ...any) hclog.Logger {
	return &bridge{base: b.base.With(args...), l: b.l.With(args...), name: b.name, implied: append(append([]any(nil), b.implied...), args...)}
}

func (b *bridge) Name() string { return b.name }

// Named keeps hclog's dotted names in the "sub" field of the tree.
func (b *bridge) Named(name string) hclog.Logger {
	if b.name != "" {
		name = b.name + "." + name
	}
	return b.named(name)
}

func (b *bridge) ResetNamed(name string) hclog.Logger { return b.named(name) }

// SetLevel is ignored: the tree's level is set once for the process.
func (b *bridge) SetLevel(hclog.Level) {}

func (b *bridge) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn} {
		if b.enabled(l) {
			return l
		}
	}
	return hclog.Error
}

func (b *bridge) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(b.StandardWriter(opts), "", 0)
}

func (b *bridge) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := slog.LevelInfo
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = toSlog(opts.ForceLevel)
	}
	return &Writer{Logger: b.l, Level: level}
}

// Writer turns the standard library's log lines into records of Logger.
// A line that starts with a bracketed level, as memberlist writes them
// ("[DEBUG] memberlist: ..."), is logged at that level without it;
// any other line at Level.
type Writer struct {
	Logger *slog.Logger
	Level  slog.Level
}

var prefixes = []struct {
	p string
	l slog.Level
}{
	{"[TRACE]", LevelTrace}, {"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
}

func (w *Writer) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := w.Level
	for _, x := range prefixes {
		if rest, ok := strings.CutPrefix(line, x.p); ok {
			level, line = x.l, strings.TrimSpace(rest)
			break
		}
	}
	w.Logger.Log(context.Background(), level, line)
	return len(p), nil
}
