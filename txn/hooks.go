package txn

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// managed is the pgx.Tx that [Run] gives fn: the transaction (or, for a nested Run, the savepoint) and the
// hooks registered on it. Hooks of a savepoint move to its parent when the savepoint is released, and run
// (rollback hooks) or are dropped (commit hooks) when it rolls back.
type managed struct {
	pgx.Tx
	parent *managed
	// top is set (non-nil) on the transaction Run began itself, the only one whose COMMIT is a real commit,
	// and points to the observer and label of that Run, for packages repo, lock and lease: to unobserved
	// when it has none. A pointer rather than a bool and a pgcc.Observation keeps managed small.
	top      *pgcc.Observation
	commit   []func(context.Context)
	rollback []func()
	final    []finalWrite // writes to send with COMMIT ([Final])
}

// unobserved is the observation of a Run without observer. It is never written.
var unobserved pgcc.Observation

var _ pgcc.Observed = (*managed)(nil)

// PGCCObservation returns the observer and label given to the outermost Run (see [pgcc.Observed]).
func (m *managed) PGCCObservation() pgcc.Observation {
	if top := m.root().top; top != nil {
		return *top
	}
	return pgcc.Observation{}
}

// AfterCommit registers fn to run once the outermost transaction that tx belongs to has committed: after
// COMMIT succeeded, on the goroutine that called [Run], before Run returns. tx must be the pgx.Tx that Run
// gave its function, or one a nested Run gave (a savepoint). It is Django's transaction.on_commit: the place
// for side effects that must follow the commit and never precede it (publish an event, send an e-mail, fill
// a cache).
//
// A hook belongs to the attempt that registered it: when the attempt is rolled back and retried, its hooks are
// dropped and the retry registers its own, so each hook runs at most once, and only for the attempt that
// committed. A hook registered in a savepoint (a nested Run) is dropped if the savepoint rolls back. When
// COMMIT's answer is lost, the hooks wait for the outcome: they run if the idempotency key
// ([WithIdempotencyKey]) shows that the attempt committed, and are dropped otherwise, including when the
// outcome stays unknown (Run then returns [pgcc.ErrCommitUnknown]; nothing tells whether their side effects
// are due, so none is done twice). Hooks run in the order they were registered; a hook that panics does not
// undo the commit and does not stop the hooks after it: every hook runs, and then the first panic continues
// from Run. ctx is Run's context.
//
// It returns an error matching [pgcc.ErrInvalidArgument] when tx did not come from Run.
func AfterCommit(tx pgx.Tx, fn func(ctx context.Context)) error {
	m, err := managedOf(tx, "AfterCommit")
	if err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("%w: AfterCommit needs a function", pgcc.ErrInvalidArgument)
	}
	if root := m.root(); root.top == nil {
		return fmt.Errorf("%w: AfterCommit: the transaction was not begun by txn.Run, so its commit cannot be seen", pgcc.ErrInvalidArgument)
	}
	m.commit = append(m.commit, fn)
	return nil
}

// AfterRollback registers fn to run when the transaction or savepoint tx stands for is rolled back: after
// fn's error, a panic, a failed COMMIT, or before a retry. It is how in-memory state changed inside the
// transaction (a version bumped by a write, a cache entry) is put back when the database forgets the change.
// Hooks run in the reverse order of registration. A hook registered in a savepoint that was released runs
// if the enclosing transaction rolls back later.
//
// When COMMIT's answer is lost, the rollback hooks run unless the idempotency key shows that the attempt
// committed, so also when the outcome stays unknown: they then restore the state of a transaction that may,
// in fact, have committed. For the state they are meant for that is safe: a version put back to its old value
// makes the next compare-and-swap write conflict and re-read, while a version left bumped by a transaction
// that did not commit would be a false conflict forever. A hook for which that is not safe must not be a
// rollback hook. tx must be a pgx.Tx that [Run] gave; otherwise the error matches [pgcc.ErrInvalidArgument].
func AfterRollback(tx pgx.Tx, fn func()) error {
	m, err := managedOf(tx, "AfterRollback")
	if err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("%w: AfterRollback needs a function", pgcc.ErrInvalidArgument)
	}
	m.rollback = append(m.rollback, fn)
	return nil
}

func managedOf(tx pgx.Tx, what string) (*managed, error) {
	if l, ok := tx.(*lastTx); ok && l != nil {
		tx = l.managed
	}
	m, ok := tx.(*managed)
	if !ok || m == nil {
		return nil, fmt.Errorf("%w: %s needs the pgx.Tx that txn.Run gave its function, not a %T", pgcc.ErrInvalidArgument, what, tx)
	}
	return m, nil
}

// PendingConn returns tx's connection without sending BEGIN, which Conn would send on a transaction that has
// not begun: for internal/lockwait, which needs the connection only to cancel a statement it sends through
// the transaction itself (and with it, BEGIN).
func (m *managed) PendingConn() *pgx.Conn {
	if l, ok := m.Tx.(*lazyTx); ok {
		return l.conn
	}
	return m.Tx.Conn()
}

func (m *managed) root() *managed {
	for m.parent != nil {
		m = m.parent
	}
	return m
}

// rolledBack runs the rollback hooks, newest first, and forgets every hook.
func (m *managed) rolledBack() {
	hooks := m.rollback
	m.commit, m.rollback = nil, nil
	for i := len(hooks) - 1; i >= 0; i-- {
		hooks[i]()
	}
}

// released hands a savepoint's hooks to its parent.
func (m *managed) released() {
	if m.parent != nil {
		m.parent.commit = append(m.parent.commit, m.commit...)
		m.parent.rollback = append(m.parent.rollback, m.rollback...)
	}
	m.commit, m.rollback = nil, nil
}

// committed runs the commit hooks in order. A panicking hook does not stop the others; the first panic
// continues once all have run.
func (m *managed) committed(ctx context.Context) {
	hooks := m.commit
	m.commit, m.rollback = nil, nil
	var first any
	for _, h := range hooks {
		func() {
			defer func() {
				if r := recover(); r != nil && first == nil {
					first = r
				}
			}()
			h(ctx)
		}()
	}
	if first != nil {
		panic(first)
	}
}
