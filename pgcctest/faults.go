package pgcctest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/testdb"
)

// FaultPool is a pool whose statements, COMMITs and COMMIT replies can be made to fail on purpose, with the
// errors a real PostgreSQL server sends. It embeds the *pgxpool.Pool it wraps, so it is a pgcc.Beginner and a
// pgcc.DBTX, and txn.Run treats it as a pool (a lost connection is retried on a fresh one). Pass it to the code
// under test where that code takes a pgcc.Beginner, a pgcc.DBTX or an interface of its own.
//
// Faults are armed through methods that return a [*Fault] handle: [FaultPool.FailStatement],
// [FaultPool.FailCommit], [FaultPool.LoseCommitReply], [FaultPool.LoseReply] and [FaultPool.AfterStatement]
// ([ConflictOnce] builds on the last). Every fault fires once unless [Times] or [Always] says otherwise.
//
// Statements are counted per transaction: those sent through a pgx.Tx that Begin or BeginTx returned
// (savepoints included), with Exec, Query or QueryRow. A statement sent with the pool's own Exec, Query or
// QueryRow outside a transaction is a transaction of one statement. SendBatch, CopyFrom, Prepare and a
// connection taken with Acquire are passed through uncounted. The wire-level faults (LoseReply,
// LoseCommitReply) apply to every connection of the pool, whatever sent the statement.
//
// A FaultPool is safe for concurrent use; each fault fires in whichever transaction reaches it first.
type FaultPool struct {
	*pgxpool.Pool

	proxy *faultnet.Proxy
	other *pgxpool.Pool

	mu       sync.Mutex
	faults   []*Fault
	hookErrs []error
}

// FaultOption adjusts a [Fault] when it is armed.
type FaultOption func(*Fault)

// Times makes the fault fire n times (once is the default): in n transactions for FailStatement, FailCommit
// and AfterStatement, on n matching statements for the wire-level faults. It panics unless n ≥ 1.
func Times(n int) FaultOption {
	if n < 1 {
		panic(fmt.Sprintf("pgcctest: Times(%d): a fault fires at least once; use Always for no limit", n))
	}
	return func(f *Fault) { f.left = n }
}

// Always makes the fault fire every time it is reached, until [Fault.Remove].
func Always() FaultOption { return func(f *Fault) { f.left = -1 } }

// Matching restricts the fault to statements for which match returns true; the k of FailStatement and
// AfterStatement then counts only matching statements of the transaction. The statement is the SQL text as
// the code under test passed it.
func Matching(match func(sql string) bool) FaultOption { return func(f *Fault) { f.match = match } }

// IsCommit reports whether sql commits a transaction (COMMIT, COMMIT WORK, END, … in any case), for
// [FaultPool.LoseReply] and [Matching].
func IsCommit(sql string) bool { return faultnet.IsCommit(sql) }

// HasPrefix returns a match function accepting statements that begin with prefix, ignoring case and leading
// white space, for [FaultPool.LoseReply] and [Matching].
func HasPrefix(prefix string) func(sql string) bool { return faultnet.SQLHasPrefix(prefix) }

type faultKind int

const (
	failStatement faultKind = iota + 1
	failCommit
	afterStatement
	loseReply
)

// Fault is an armed fault. Its methods are safe for concurrent use.
type Fault struct {
	p     *FaultPool
	kind  faultKind
	k     int
	code  string
	match func(sql string) bool
	hook  func(ctx context.Context, other *pgxpool.Pool) error
	rule  *faultnet.Rule

	// Guarded by p.mu.
	left    int // firings left; -1 for no limit
	fired   int
	removed bool
}

// Fired returns how many times the fault has fired.
func (f *Fault) Fired() int {
	if f.rule != nil {
		return f.rule.Fired()
	}
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	return f.fired
}

// Remove disarms the fault. One that already fired has done its work.
func (f *Fault) Remove() {
	if f.rule != nil {
		f.rule.Remove()
		return
	}
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	f.removed = true
}

// OpenFaultPool opens a [FaultPool] with cfg: its connections go through an in-process TCP proxy on
// 127.0.0.1 in front of cfg's first host (which must be reached over TCP, without TLS for the wire-level
// faults), and a second pool of two direct connections serves [FaultPool.AfterStatement] hooks. It creates
// the schema "pgcctest" (a table with a deferred constraint trigger, used by [FaultPool.FailCommit]) in the
// database if it is missing. Tests use [DB.FaultPool], which closes it when the test ends.
//
// [FaultPool.LoseReply] matches a statement by its simple Query or Parse message and loses the server's
// answer up to the next ReadyForQuery. With pgx.QueryExecModeExec (what DB.FaultPool sets) or the simple
// protocol, that answer is the statement's execution. With pgx's default mode (QueryExecModeCacheStatement)
// a statement is first prepared in a round trip of its own, whose answer is then the one lost (the statement
// never ran), and a statement already in the cache sends no Parse and is not matched at all. COMMIT, sent
// by pgx as a simple query, is matched in every mode.
func OpenFaultPool(ctx context.Context, cfg *pgxpool.Config) (*FaultPool, error) {
	if cfg.ConnConfig.Host == "" || cfg.ConnConfig.Host[0] == '/' {
		return nil, fmt.Errorf("pgcctest: a FaultPool needs a server reached over TCP, not %q", cfg.ConnConfig.Host)
	}
	otherCfg := cfg.Copy()
	otherCfg.MaxConns = 2
	otherCfg.MinConns = 0
	other, err := pgxpool.NewWithConfig(ctx, otherCfg)
	if err != nil {
		return nil, fmt.Errorf("pgcctest: %w", err)
	}
	if err := ensureFaultSchema(ctx, other); err != nil {
		other.Close()
		return nil, fmt.Errorf("pgcctest: create the schema pgcctest: %w", err)
	}
	proxy, err := faultnet.New(net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	if err != nil {
		other.Close()
		return nil, fmt.Errorf("pgcctest: %w", err)
	}
	proxied := cfg.Copy()
	host, port, _ := net.SplitHostPort(proxy.Addr())
	p, _ := strconv.Atoi(port)
	proxied.ConnConfig.Host, proxied.ConnConfig.Port = host, uint16(p)
	proxied.ConnConfig.Fallbacks = nil
	pool, err := pgxpool.NewWithConfig(ctx, proxied)
	if err != nil {
		_ = proxy.Close()
		other.Close()
		return nil, fmt.Errorf("pgcctest: %w", err)
	}
	return &FaultPool{Pool: pool, proxy: proxy, other: other}, nil
}

// FaultPool opens a [FaultPool] on the database, configured as [DB.Pool] configures a pool except that
// statements use pgx.QueryExecModeExec (one round trip each, for LoseReply; configure may change it). When t
// ends it checks that every connection was released (as DB.Pool does), reports errors of AfterStatement hooks
// as test failures, and closes the pool, its proxy and its direct connections.
func (d *DB) FaultPool(t testing.TB, configure ...func(*pgxpool.Config)) *FaultPool {
	t.Helper()
	cfg, err := d.PoolConfig()
	if err != nil {
		t.Fatalf("pgcctest: %v", err)
	}
	// Every statement in one round trip, its Parse with its Execute, so that LoseReply loses the answer of a
	// statement that ran (see OpenFaultPool).
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	for _, f := range configure {
		f(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := OpenFaultPool(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := testdb.AwaitReleased(p.Pool, testdb.LeakGrace); n != 0 {
			t.Errorf("pgcctest: %d connection(s) still acquired from the FaultPool when the test ended: a leak", n)
		}
		if err := p.HookErr(); err != nil {
			t.Errorf("pgcctest: %v", err)
		}
		p.Close()
	})
	return p
}

// Close closes the pool, the proxy and the direct connections.
func (p *FaultPool) Close() {
	p.Pool.Close()
	_ = p.proxy.Close()
	p.other.Close()
}

// Direct returns the pool of direct connections (two at most) that AfterStatement hooks use: statements sent
// through it bypass every fault, for a test's own setup and assertions.
func (p *FaultPool) Direct() *pgxpool.Pool { return p.other }

// HookErr returns the errors of the AfterStatement hooks that failed so far, joined, or nil.
func (p *FaultPool) HookErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(p.hookErrs...)
}

func (p *FaultPool) arm(f *Fault, opts []FaultOption) *Fault {
	f.p = p
	f.left = 1
	for _, o := range opts {
		o(f)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, f)
	return f
}

// FailStatement makes the k-th statement (k ≥ 1) of the next transaction fail with SQLSTATE code (use the
// constants of github.com/jackc/pgerrcode: SerializationFailure, DeadlockDetected, LockNotAvailable, …). The
// statement is not sent; in its place the server runs a DO block that raises the error, so that the
// transaction is aborted by the server and the caller gets the server's *pgconn.PgError with that Code, as
// for a real conflict. With [Times] it fires in that many transactions, with [Matching] k counts only the
// matching statements.
func (p *FaultPool) FailStatement(k int, code string, opts ...FaultOption) *Fault {
	mustCode(code)
	if k < 1 {
		panic(fmt.Sprintf("pgcctest: FailStatement(%d, …): statements are counted from 1", k))
	}
	return p.arm(&Fault{kind: failStatement, k: k, code: code}, opts)
}

// FailCommit makes the COMMIT of the next transaction fail with SQLSTATE code. Just before COMMIT, a row is
// inserted into pgcctest.commit_faults, whose deferred constraint trigger raises the error while the server
// commits: the COMMIT itself gets the error response, the transaction is rolled back, and nothing it wrote
// remains. A READ ONLY transaction cannot insert the row; for one, the error is raised by a statement sent
// just before COMMIT, and the transaction is rolled back. With [Matching], the fault fires only in a
// transaction that sent a matching statement.
func (p *FaultPool) FailCommit(code string, opts ...FaultOption) *Fault {
	mustCode(code)
	return p.arm(&Fault{kind: failCommit, code: code}, opts)
}

// AfterStatement runs hook once the k-th statement (k ≥ 1) of the next transaction has completed (its rows
// read, for a query), before control returns to the code under test. hook gets the pool of direct
// connections, outside the caller's transaction: what it writes commits before the caller's next statement,
// which is how a test puts a concurrent write between a read and a write. An error of hook is kept for
// [FaultPool.HookErr] (a test failure with DB.FaultPool). The caller's statement error, if any, is unchanged.
func (p *FaultPool) AfterStatement(k int, hook func(ctx context.Context, other *pgxpool.Pool) error, opts ...FaultOption) *Fault {
	if k < 1 {
		panic(fmt.Sprintf("pgcctest: AfterStatement(%d, …): statements are counted from 1", k))
	}
	return p.arm(&Fault{kind: afterStatement, k: k, hook: hook}, opts)
}

// LoseReply makes the next statement for which match returns true reach the server and run, and its answer
// never come back: the proxy drops the server's reply and resets the client's connection once the server is
// ready for the next statement. It is what a network failure during the statement looks like when the
// server had already done the work. Unlike the other faults it applies to every connection of the pool,
// however the statement was sent. [Times] and [Always] apply; [Matching] does not.
func (p *FaultPool) LoseReply(match func(sql string) bool, opts ...FaultOption) *Fault {
	f := &Fault{p: p, kind: loseReply, left: 1}
	for _, o := range opts {
		o(f)
	}
	var ropts []faultnet.RuleOption
	if f.left < 0 {
		ropts = append(ropts, faultnet.Always())
	} else {
		ropts = append(ropts, faultnet.Times(f.left))
	}
	f.rule = p.proxy.OnQuery(match, faultnet.LoseReply, ropts...)
	return f
}

// LoseCommitReply is LoseReply(IsCommit, opts...): the next transaction commits on the server and its client
// sees the connection fail during COMMIT. txn.Run reports it as a *pgcc.CommitUnknownError, or settles it
// with the transaction's idempotency key (txn.WithIdempotencyKey).
func (p *FaultPool) LoseCommitReply(opts ...FaultOption) *Fault {
	return p.LoseReply(IsCommit, opts...)
}

// mustCode panics unless code looks like a SQLSTATE: five digits or upper-case letters.
func mustCode(code string) {
	ok := len(code) == 5
	for _, r := range code {
		ok = ok && (r >= '0' && r <= '9' || r >= 'A' && r <= 'Z')
	}
	if !ok {
		panic(fmt.Sprintf("pgcctest: %q is not a SQLSTATE (use the constants of github.com/jackc/pgerrcode)", code))
	}
}

// txState counts one transaction's statements, per fault (a fault with Matching counts only its own).
// A transaction is used by one goroutine at a time, as pgx requires, so it needs no lock.
type txState struct {
	readOnly bool
	counts   map[*Fault]int
	matched  map[*Fault]bool // for FailCommit with Matching
}

func newTxState(readOnly bool) *txState {
	return &txState{readOnly: readOnly, counts: map[*Fault]int{}, matched: map[*Fault]bool{}}
}

// action is what to do with one statement.
type action struct {
	fail  *Fault   // raise this fault's code instead of the statement
	hooks []*Fault // run after the statement
	stmt  int      // the statement's number in the transaction, for the error message
}

// before counts a statement of st and decides what happens to it.
func (p *FaultPool) before(st *txState, sql string) action {
	p.mu.Lock()
	defer p.mu.Unlock()
	var a action
	for _, f := range p.faults {
		if f.removed || f.left == 0 {
			continue
		}
		if f.match != nil && !f.match(sql) {
			continue
		}
		switch f.kind {
		case failCommit:
			st.matched[f] = true
			continue
		case failStatement, afterStatement:
		default:
			continue
		}
		st.counts[f]++
		if st.counts[f] != f.k {
			continue
		}
		if f.kind == failStatement && a.fail == nil {
			a.fail = f
			a.stmt = st.counts[f]
			f.take()
		} else if f.kind == afterStatement {
			a.hooks = append(a.hooks, f)
			f.take()
		}
	}
	if a.fail != nil {
		// The statement will not run, so no hook may run after it: give their firings back.
		for _, f := range a.hooks {
			f.fired--
			if f.left >= 0 {
				f.left++
			}
		}
		a.hooks = nil
	}
	return a
}

// take records one firing; p.mu is held.
func (f *Fault) take() {
	f.fired++
	if f.left > 0 {
		f.left--
	}
}

// commitFault returns the FailCommit fault that fires at st's COMMIT, if any.
func (p *FaultPool) commitFault(st *txState) *Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.faults {
		if f.kind != failCommit || f.removed || f.left == 0 || (f.match != nil && !st.matched[f]) {
			continue
		}
		f.take()
		return f
	}
	return nil
}

// after runs the hooks a statement triggered.
func (p *FaultPool) after(ctx context.Context, a action) {
	for _, f := range a.hooks {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), hookTimeout)
		err := f.hook(hctx, p.other)
		cancel()
		if err != nil {
			p.mu.Lock()
			p.hookErrs = append(p.hookErrs, fmt.Errorf("AfterStatement(%d) hook: %w", f.k, err))
			p.mu.Unlock()
		}
	}
}

// hookTimeout bounds a hook, so that one blocked by the caller's own locks fails instead of hanging.
const hookTimeout = 10 * time.Second

// raiseSQL is the DO block that makes the server raise f's code in place of statement n.
func raiseSQL(code, what string) string {
	// code is checked by mustCode and what is built from constants and numbers, so neither can end the
	// literal or the dollar quote.
	return "DO $pgcctest$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', MESSAGE = 'pgcctest: injected SQLSTATE " +
		code + " " + what + "'; END $pgcctest$"
}

func (a action) raise() string { return raiseSQL(a.fail.code, "at statement "+strconv.Itoa(a.stmt)) }

// Begin starts a transaction whose statements and COMMIT the pool's faults apply to.
func (p *FaultPool) Begin(ctx context.Context) (pgx.Tx, error) {
	return p.BeginTx(ctx, pgx.TxOptions{})
}

// BeginTx starts a transaction with txOptions whose statements and COMMIT the pool's faults apply to.
func (p *FaultPool) BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error) {
	tx, err := p.Pool.BeginTx(ctx, txOptions)
	if err != nil {
		return nil, err
	}
	return &faultTx{Tx: tx, p: p, st: newTxState(txOptions.AccessMode == pgx.ReadOnly)}, nil
}

// Exec runs sql outside a transaction, as a transaction of one statement for the faults.
func (p *FaultPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return exec(ctx, p, p.Pool, newTxState(false), sql, args)
}

// Query runs sql outside a transaction, as a transaction of one statement for the faults.
func (p *FaultPool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return query(ctx, p, p.Pool, newTxState(false), sql, args)
}

// QueryRow runs sql outside a transaction, as a transaction of one statement for the faults.
func (p *FaultPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return queryRow(ctx, p, p.Pool, newTxState(false), sql, args)
}

// dbtx is what runs a statement: the pool or a transaction.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func exec(ctx context.Context, p *FaultPool, db dbtx, st *txState, sql string, args []any) (pgconn.CommandTag, error) {
	a := p.before(st, sql)
	if a.fail != nil {
		_, err := db.Exec(ctx, a.raise())
		return pgconn.CommandTag{}, err
	}
	tag, err := db.Exec(ctx, sql, args...)
	p.after(ctx, a)
	return tag, err
}

func query(ctx context.Context, p *FaultPool, db dbtx, st *txState, sql string, args []any) (pgx.Rows, error) {
	a := p.before(st, sql)
	if a.fail != nil {
		return db.Query(ctx, a.raise())
	}
	rows, err := db.Query(ctx, sql, args...)
	if err != nil || len(a.hooks) == 0 {
		p.after(ctx, a)
		return rows, err
	}
	return &hookedRows{Rows: rows, run: func() { p.after(ctx, a) }}, nil
}

func queryRow(ctx context.Context, p *FaultPool, db dbtx, st *txState, sql string, args []any) pgx.Row {
	a := p.before(st, sql)
	if a.fail != nil {
		return db.QueryRow(ctx, a.raise())
	}
	row := db.QueryRow(ctx, sql, args...)
	if len(a.hooks) == 0 {
		return row
	}
	return hookedRow{row: row, run: func() { p.after(ctx, a) }}
}

// hookedRows runs the hooks once the rows are closed: the statement has then completed.
type hookedRows struct {
	pgx.Rows
	run  func()
	done bool
}

func (r *hookedRows) Close() {
	r.Rows.Close()
	r.fire()
}

func (r *hookedRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.fire() // Next returning false closes the rows
	return false
}

func (r *hookedRows) fire() {
	if !r.done {
		r.done = true
		r.run()
	}
}

// hookedRow runs the hooks after Scan, which reads the row and completes the statement.
type hookedRow struct {
	row pgx.Row
	run func()
}

func (r hookedRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	r.run()
	return err
}

// faultTx is a transaction (or savepoint) of a FaultPool.
type faultTx struct {
	pgx.Tx
	p         *FaultPool
	st        *txState
	savepoint bool
}

func (t *faultTx) Begin(ctx context.Context) (pgx.Tx, error) {
	sp, err := t.Tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &faultTx{Tx: sp, p: t.p, st: t.st, savepoint: true}, nil
}

func (t *faultTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return exec(ctx, t.p, t.Tx, t.st, sql, args)
}

func (t *faultTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return query(ctx, t.p, t.Tx, t.st, sql, args)
}

func (t *faultTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return queryRow(ctx, t.p, t.Tx, t.st, sql, args)
}

// commitFaultSQL arms the deferred constraint trigger of pgcctest.commit_faults.
const commitFaultSQL = "INSERT INTO pgcctest.commit_faults (code, message) VALUES ($1, $2)"

func (t *faultTx) Commit(ctx context.Context) error {
	if t.savepoint {
		return t.Tx.Commit(ctx)
	}
	f := t.p.commitFault(t.st)
	if f == nil {
		return t.Tx.Commit(ctx)
	}
	if t.st.readOnly {
		_, err := t.Tx.Exec(ctx, raiseSQL(f.code, "before COMMIT"))
		rbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = t.Tx.Rollback(rbCtx)
		if err == nil {
			err = errors.New("pgcctest: the injected error was not raised")
		}
		return err
	}
	// An error here means the transaction had already failed; COMMIT then reports the rollback.
	_, _ = t.Tx.Exec(ctx, commitFaultSQL, f.code, "pgcctest: injected SQLSTATE "+f.code+" at COMMIT")
	return t.Tx.Commit(ctx)
}

// faultSchemaLock serialises creating the schema pgcctest between FaultPools opened at once (its value is
// the first eight bytes of "pgcctest" read as a big-endian integer).
const faultSchemaLock = 0x7067636374657374

// ensureFaultSchema creates pgcctest.commit_faults and its deferred constraint trigger, unless they exist.
func ensureFaultSchema(ctx context.Context, db *pgxpool.Pool) error {
	var exists bool
	if err := db.QueryRow(ctx, "SELECT to_regclass('pgcctest.commit_faults') IS NOT NULL").Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(faultSchemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, faultSchema)
		return err
	})
}

// faultSchema is the DDL behind FailCommit: a row inserted into commit_faults raises its code when the
// transaction commits, through a constraint trigger deferred to COMMIT. The table never holds a row, since
// the transaction that inserts one cannot commit.
const faultSchema = `
CREATE SCHEMA IF NOT EXISTS pgcctest;
CREATE TABLE IF NOT EXISTS pgcctest.commit_faults (code text NOT NULL, message text NOT NULL);
CREATE OR REPLACE FUNCTION pgcctest.raise_commit_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION USING ERRCODE = NEW.code, MESSAGE = NEW.message;
END
$$;
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'commit_fault' AND tgrelid = 'pgcctest.commit_faults'::regclass) THEN
		CREATE CONSTRAINT TRIGGER commit_fault AFTER INSERT ON pgcctest.commit_faults
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgcctest.raise_commit_fault();
	END IF;
END
$$;`
