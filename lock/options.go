package lock

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
	"github.com/pgcc/pgcc/txn"
)

// Strength is the row-lock mode of a SELECT … FOR …; docs/pessimistic.md has the conflict table. The zero
// value is [ForNoKeyUpdate], what PostgreSQL itself takes for an UPDATE that leaves the key alone.
type Strength int

const (
	// ForNoKeyUpdate locks the rows against every other lock, update and delete, except the FOR KEY SHARE
	// locks that foreign-key checks take: the mode for read-modify-write of non-key columns, and the default.
	// It is what a plain UPDATE of non-key columns takes, so a transaction that locks a row this way and then
	// updates it never needs a stronger lock, and inserting child rows that reference it never waits for it.
	ForNoKeyUpdate Strength = iota
	// ForUpdate locks the rows against every other lock, foreign-key checks included: for a transaction that
	// will delete the rows or change their key. It conflicts with the FOR KEY SHARE a foreign-key check takes,
	// so a transaction that inserted a child row (taking FOR KEY SHARE on the parent) and then locks the
	// parent FOR UPDATE can deadlock with another doing the same (docs/pessimistic.md).
	ForUpdate
	// ForShare lets other transactions read-lock the rows too but blocks their updates and deletes.
	ForShare
	// ForKeyShare only blocks deletes and key changes: what a foreign-key check takes on the parent row.
	ForKeyShare
)

// String returns the SQL locking clause, "FOR NO KEY UPDATE" for [ForNoKeyUpdate].
func (s Strength) String() string {
	switch s {
	case ForUpdate:
		return "FOR UPDATE"
	case ForNoKeyUpdate:
		return "FOR NO KEY UPDATE"
	case ForShare:
		return "FOR SHARE"
	case ForKeyShare:
		return "FOR KEY SHARE"
	}
	return fmt.Sprintf("Strength(%d)", int(s))
}

func (s Strength) valid() bool { return s >= ForNoKeyUpdate && s <= ForKeyShare }

// WaitPolicy says what a lock request does when another transaction holds a conflicting lock. The zero value is
// [Wait].
type WaitPolicy int

const (
	// Wait blocks until the lock is granted, bounded by the context and any [WithTimeout].
	Wait WaitPolicy = iota
	// NoWait fails at once with [pgcc.ErrLockNotAvailable] (SQLSTATE 55P03).
	NoWait
	// SkipLocked leaves out the rows another transaction holds: the work-queue policy of [Claim].
	SkipLocked
)

// String returns the SQL wait clause: "" for [Wait], "NOWAIT", "SKIP LOCKED".
func (w WaitPolicy) String() string {
	switch w {
	case Wait:
		return ""
	case NoWait:
		return "NOWAIT"
	case SkipLocked:
		return "SKIP LOCKED"
	}
	return fmt.Sprintf("WaitPolicy(%d)", int(w))
}

func (w WaitPolicy) valid() bool { return w >= Wait && w <= SkipLocked }

// Option configures a lock request. Each kind of option may be given once: the same option twice with the same
// value is accepted, with different values (WithWait(NoWait) and WithWait(SkipLocked), two Where predicates)
// it is refused, never silently decided by the last one. An option a function cannot honour makes it return an
// error matching [pgcc.ErrInvalidArgument] before anything is sent.
type Option func(*config)

// config is what the options build; its zero value is the documented default.
type config struct {
	strength     Strength
	strengthSet  bool
	wait         WaitPolicy
	waitSet      bool
	timeout      time.Duration
	diag         pgcc.DBTX
	where        string
	whereArgs    []any
	whereSet     bool
	orderBy      string
	limit        int
	limitSet     bool
	allowMissing bool
	lossCheck    time.Duration
	observer     pgcc.Observer
	run          []txn.Option
	runSet       bool
	invalid      []string
}

func (c *config) refuse(format string, args ...any) {
	c.invalid = append(c.invalid, fmt.Sprintf(format, args...))
}

// WithStrength sets the row-lock mode; the default is [ForNoKeyUpdate]. Advisory locks accept [ForUpdate]
// (exclusive, their default) and [ForShare] (shared).
func WithStrength(s Strength) Option {
	return func(c *config) {
		switch {
		case !s.valid():
			c.refuse("unknown lock strength %d", int(s))
		case c.strengthSet && c.strength != s:
			c.refuse("WithStrength given twice (%v, then %v)", c.strength, s)
		default:
			c.strength, c.strengthSet = s, true
		}
	}
}

// WithWait sets the wait policy: lock.WithWait(lock.NoWait) fails at once, lock.WithWait(lock.SkipLocked)
// leaves out locked rows. The default is [Wait].
func WithWait(w WaitPolicy) Option {
	return func(c *config) {
		switch {
		case !w.valid():
			c.refuse("unknown wait policy %d", int(w))
		case c.waitSet && c.wait != w:
			c.refuse("WithWait given twice (%v, then %v)", waitName(c.wait), waitName(w))
		default:
			c.wait, c.waitSet = w, true
		}
	}
}

func waitName(w WaitPolicy) string {
	switch w {
	case Wait:
		return "Wait"
	case NoWait:
		return "NoWait"
	case SkipLocked:
		return "SkipLocked"
	}
	return w.String()
}

// WithTimeout bounds the wait for the lock: past d the request fails with [pgcc.ErrLockNotAvailable]
// (PostgreSQL's lock_timeout, SQLSTATE 55P03, set for this one statement and restored after it). It replaces,
// for the statement, any lock_timeout the session or transaction has; a context deadline that comes sooner
// still wins. d is rounded up to a whole millisecond; it must be positive and at most [MaxTimeout] (about
// 24.8 days, the largest lock_timeout PostgreSQL accepts): anything else is refused, not clamped. Leave it
// out for no explicit bound.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		switch {
		case d <= 0:
			c.refuse("lock timeout must be positive, got %v", d)
		case d > MaxTimeout:
			c.refuse("lock timeout %v exceeds PostgreSQL's largest lock_timeout, %v", d, MaxTimeout)
		case c.timeout != 0 && c.timeout != d:
			c.refuse("WithTimeout given twice (%v, then %v)", c.timeout, d)
		default:
			c.timeout = d
		}
	}
}

// MaxTimeout is the longest [WithTimeout] accepted: PostgreSQL's lock_timeout is at most 2^31-1 milliseconds.
// A context deadline further away than that is not sent as a lock_timeout; the context still ends the wait.
const MaxTimeout = lockwait.MaxTimeout

// WithDiagnostics names a second handle on the same database (typically the application's pool) through which,
// when a lock request fails with [pgcc.ErrLockNotAvailable], [pgcc.ErrDeadlock] or because its context ended,
// a few queries look up who holds the lock. The answer is in [pgcc.LockError.Blockers]. Without it no query is
// made. With it, the lock statement also asks for its own backend's pid (in the same round trip), so the
// requester is never reported as its own blocker; the lookup after a failure takes at most two seconds.
func WithDiagnostics(db pgcc.DBTX) Option {
	return func(c *config) {
		switch {
		case lockwait.IsNil(db):
			c.refuse("WithDiagnostics needs a non-nil handle")
		case c.diag != nil && !lockwait.SameHandle(c.diag, db):
			c.refuse("WithDiagnostics given twice with different handles")
		default:
			c.diag = db
		}
	}
}

// Where restricts the rows [Select] and [Claim] consider to those matching predicate, a SQL boolean
// expression over the table's columns whose values come from args as $1, $2, … (the call numbers its own
// parameters after them).
//
// predicate is spliced into the statement verbatim: it must be a constant written by the programmer, never
// text that came from a user. Values, including those a user chose, go in args.
func Where(predicate string, args ...any) Option {
	return func(c *config) {
		switch {
		case strings.TrimSpace(predicate) == "":
			c.refuse("Where needs a predicate")
		case c.whereSet:
			c.refuse("Where given twice; write one predicate joining both with AND")
		default:
			c.where, c.whereArgs, c.whereSet = predicate, args, true
		}
	}
}

// OrderBy sets the order in which [Select] and [Claim] take and return rows, a SQL ORDER BY list such as
// "priority DESC, id"; the default is the key columns, ascending. Transactions that lock overlapping rows in
// different orders can deadlock, so keep one order per table (and end it with the key, so that it is total).
//
// expr is spliced into the statement verbatim: it must be a constant written by the programmer.
func OrderBy(expr string) Option {
	return func(c *config) {
		switch {
		case strings.TrimSpace(expr) == "":
			c.refuse("OrderBy needs an expression")
		case c.orderBy != "":
			c.refuse("OrderBy given twice; write one list")
		default:
			c.orderBy = expr
		}
	}
}

// Limit makes [Select] lock and return at most n rows (n ≥ 1). [Claim] takes its limit as an argument.
func Limit(n int) Option {
	return func(c *config) {
		switch {
		case n < 1:
			c.refuse("Limit must be at least 1, got %d", n)
		case c.limitSet && c.limit != n:
			c.refuse("Limit given twice (%d, then %d)", c.limit, n)
		default:
			c.limit, c.limitSet = n, true
		}
	}
}

// AllowMissing makes [Rows] and [Load] leave out keys without a row instead of failing with a
// [*MissingError]; [Load] then returns fewer rows than keys, still in the order asked.
func AllowMissing() Option { return func(c *config) { c.allowMissing = true } }

// WithLossCheck sets how often a session lock's connection is checked between the events that reveal its
// loss at once (the server closing the connection); see [Held.Lost]. The default is [DefaultLossCheck]. Each
// check waits for the server's answer for the interval or [LossCheckTimeout], whichever is longer, so that a
// slow server or a loaded client is not taken for a lost lock (a check that times out closes the connection,
// which does release the lock). Only [SessionLock] and [TrySessionLock] accept it.
func WithLossCheck(every time.Duration) Option {
	return func(c *config) {
		switch {
		case every <= 0:
			c.refuse("WithLossCheck needs a positive interval, got %v", every)
		case c.lossCheck != 0 && c.lossCheck != every:
			c.refuse("WithLossCheck given twice (%v, then %v)", c.lossCheck, every)
		default:
			c.lossCheck = every
		}
	}
}

// CancelGrace is how long a cancelled lock request waits for the server to acknowledge the cancel request and
// end the statement before it closes the connection.
const CancelGrace = lockwait.CancelGrace

// DeadlineGrace is how long after its context's deadline a lock request waits for the server's answer before it
// closes the connection and returns.
const DeadlineGrace = lockwait.DeadlineGrace

// DefaultLossCheck is how often a session lock's connection is checked when [WithLossCheck] is not given.
const DefaultLossCheck = time.Second

// LossCheckTimeout is the least time a session lock's connection check waits for the server's answer before
// it gives the connection up (closing it, which releases the lock) and reports the lock lost.
const LossCheckTimeout = 2 * time.Second

// use says which function applies the options, and so which options it accepts.
type use int

const (
	useRows        use = iota // Rows, Load
	useRow                    // Row
	useSelect                 // Select
	useClaim                  // Claim
	useXact                   // XactLock, TryXactLock
	useSession                // SessionLock, TrySessionLock
	useUpdate                 // Update
	useClaimUpdate            // ClaimAndUpdate
)

var useNames = [...]string{useRows: "Rows and Load", useRow: "Row", useSelect: "Select", useClaim: "Claim",
	useXact: "advisory locks", useSession: "session locks", useUpdate: "Update", useClaimUpdate: "ClaimAndUpdate"}

// newConfig applies opts and reports every invalid option, and every option the function cannot honour, in
// one error naming them.
func newConfig(u use, opts []Option) (*config, error) {
	c := &config{}
	for i, o := range opts {
		if o == nil {
			c.refuse("option %d is nil", i)
			continue
		}
		o(c)
	}
	name := useNames[u]
	claims := u == useClaim || u == useClaimUpdate
	if c.whereSet && u != useSelect && !claims {
		c.refuse("%s take no Where (Select and Claim do)", name)
	}
	if c.orderBy != "" && u != useSelect && !claims {
		c.refuse("%s take no OrderBy (Select and Claim do)", name)
	}
	if c.runSet && u != useUpdate && u != useClaimUpdate {
		c.refuse("%s take no WithRunOptions (Update and ClaimAndUpdate, which run their own transaction, do)", name)
	}
	if c.limitSet && u != useSelect {
		c.refuse("%s take no Limit option (Select does; Claim takes its limit as an argument)", name)
	}
	if c.allowMissing && u != useRows {
		c.refuse("%s take no AllowMissing (Rows and Load do)", name)
	}
	if c.lossCheck != 0 && u != useSession {
		c.refuse("%s take no WithLossCheck (session locks do)", name)
	}
	switch u {
	case useUpdate:
		if c.wait == SkipLocked {
			c.refuse("Update cannot skip its row; use NoWait, or ClaimAndUpdate for a work queue")
		}
	case useClaim, useClaimUpdate:
		if c.waitSet && c.wait != SkipLocked {
			c.refuse("Claim always skips locked rows; it takes no other wait policy")
		}
		c.wait = SkipLocked
	case useXact, useSession:
		switch {
		case !c.strengthSet:
			c.strength = ForUpdate
		case c.strength != ForUpdate && c.strength != ForShare:
			c.refuse("advisory locks are exclusive (ForUpdate) or shared (ForShare), not %v", c.strength)
		}
		if c.wait == SkipLocked {
			c.refuse("advisory locks cannot skip; use NoWait or a Try function")
		}
	}
	if len(c.invalid) > 0 {
		return nil, fmt.Errorf("%w: %s", pgcc.ErrInvalidArgument, strings.Join(c.invalid, "; "))
	}
	return c, nil
}

// WithRunOptions gives the options of the transaction that [Update] and [ClaimAndUpdate] run with txn.Run:
// its retry policy (txn.WithMaxAttempts, txn.WithBackoff, txn.RetryIf, txn.RetryLockNotAvailable), isolation,
// timeouts, observer and label. Only those two functions take it: the other functions of the package run
// inside the caller's transaction. Given twice, the lists are joined in order.
func WithRunOptions(opts ...txn.Option) Option {
	return func(c *config) {
		c.run = append(c.run, opts...)
		c.runSet = true
	}
}

// bounds is the part of c that bounds a lock statement run on db, with the observer of db's transaction or,
// failing that, of [WithObserver].
func (c *config) bounds(db any) lockwait.Config {
	return lockwait.Config{Timeout: c.timeout, Diag: c.diag, Obs: pgcc.ObservationOf(db, c.observer)}
}

// WithObserver reports each lock request of the call to o ([pgcc.LockWaitEvent]): what was asked for, how
// long it waited, whether it was granted and, with [WithDiagnostics], who blocked it. A request made on the
// pgx.Tx of a txn.Run given txn.WithObserver reports to that observer instead, with the transaction's label,
// so inside txn.Run this option is needed only to observe a transaction that has none. A nil o attaches
// nothing.
func WithObserver(o pgcc.Observer) Option {
	return func(c *config) { c.observer = o }
}
