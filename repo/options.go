package repo

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/txn"
)

// This file lets Modify say which of its txn options it cannot honour. txn.Retry refuses an option that
// shapes a transaction (isolation, access mode, timeouts) in txn's own words ("Retry runs no
// transaction…"), naming a function the caller of Modify did not call; these helpers find the option and
// its name, on the error path only.

// shapesTransaction reports whether o is an option that txn.Run accepts and txn.Retry refuses: one that sets
// up a transaction. It asks txn itself: Retry with a function that does nothing, and Run with a handle whose
// BeginTx ends the probe (Run validates its options before it begins a transaction, so reaching BeginTx
// means Run accepted o). Nothing is sent anywhere.
func shapesTransaction(o txn.Option) bool {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := txn.Retry(ctx, func(context.Context) error { return nil }, o); err == nil {
		return false
	}
	p := &probeBeginner{cancel: cancel}
	_ = txn.Run(ctx, p, func(context.Context, pgx.Tx) error { return nil }, o)
	return p.reached
}

var errProbe = errors.New("repo: option probe")

// probeBeginner records that txn.Run got as far as beginning a transaction, and cancels the probe's context
// so that Run returns at once, whatever its retry policy.
type probeBeginner struct {
	cancel  context.CancelFunc
	reached bool
}

func (p *probeBeginner) Begin(context.Context) (pgx.Tx, error) {
	p.reached = true
	p.cancel()
	return nil, errProbe
}

func (p *probeBeginner) BeginTx(ctx context.Context, _ pgx.TxOptions) (pgx.Tx, error) {
	return p.Begin(ctx)
}

// optionName is "txn.WithIsolation" for an option made by txn.WithIsolation, or "an option" when the name
// cannot be found. The compiler names the closure an option constructor returns after the constructor:
// "github.com/pgcc/pgcc/txn.WithIsolation.func1", or, inlined into its caller,
// "example.com/app.handler.WithIsolation.func3" (a closure in a closure adds ".1").
func optionName(o txn.Option) string {
	fn := runtime.FuncForPC(reflect.ValueOf(o).Pointer())
	if fn == nil {
		return "an option"
	}
	name := fn.Name()
	for {
		i := strings.LastIndexByte(name, '.')
		if i < 0 {
			return "an option"
		}
		seg := name[i+1:]
		name = name[:i]
		if strings.HasPrefix(seg, "func") {
			break
		}
		if seg == "" || strings.Trim(seg, "0123456789") != "" {
			return "an option"
		}
	}
	seg := name[strings.LastIndexByte(name, '.')+1:]
	if seg == "" || seg[0] < 'A' || seg[0] > 'Z' {
		return "an option"
	}
	return "txn." + seg
}
