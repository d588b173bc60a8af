package faults_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pginstance"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/schema"
)

// keyedTimeout is the deadline of an operation with an idempotency key: long enough for the key's look-up to
// settle a lost COMMIT between the faults, even in the long form, where 32 workers share 8 connections and
// the look-up waits for one of them while backends keep being killed (the long form's network cells give it
// networkKeyedTimeout).
const keyedTimeout = 30 * time.Second

// networkKeyedTimeout is keyedTimeout in the long form's network cells. There the faults, 32 workers per cell
// and two cells at a time on two cores raise reconnect storms that fill the server's accept queue: stretches of
// up to 58 s were measured in which no connection opened and no operation of the cell succeeded (the cell logs
// its longest). A key settles a lost COMMIT only once a connection opens, so a keyed call is given a deadline
// longer than such a stretch, as a service facing those outages would give its keyed calls; with 30 s, one to
// 22 keyed calls per full run ended commit-unknown (docs/reliability.md).
const networkKeyedTimeout = 90 * time.Second

// newBank creates the workload's tables in db, with p.accounts accounts.
func newBank(t *testing.T, db *pgtest.DB, p params) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := db.Conn(t)
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO accounts (id, balance) SELECT g, $1 FROM generate_series(1, $2::int) g",
		openingBalance, p.accounts); err != nil {
		t.Fatal(err)
	}
}

// workerPool opens the workers' pool on db.
func workerPool(t *testing.T, db *pgtest.DB, p params) *pgxpool.Pool {
	t.Helper()
	return db.Pool(t, func(c *pgxpool.Config) {
		c.MaxConns = p.conns
		c.ConnConfig.ConnectTimeout = 5 * time.Second
	})
}

// sleep waits for d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// TestBackendKills runs every strategy while one backend of the test's database, chosen at random, is
// terminated about every 100 ms.
func TestBackendKills(t *testing.T) {
	t.Parallel()
	p := loadParams(t).forFault("kills")
	for _, s := range strategies {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			pgtest.Deadline(t, p.duration+2*time.Minute)
			db := pgtest.NewDB(t)
			newBank(t, db, p)
			admin := db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
			c := cell{p: p, s: s, pool: workerPool(t, db, p), check: func(*testing.T) *pgxpool.Pool { return admin },
				timeout: 5 * time.Second, keyedTimeout: keyedTimeout}
			c.serverPort = int(admin.Config().ConnConfig.Port)
			c.inject = func(ctx context.Context, rec *recorder) {
				for sleep(ctx, time.Duration(50+rand.IntN(100))*time.Millisecond) {
					var n int
					// The test's own database only, never the checker's own backend.
					err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM (
						SELECT pid FROM pg_stat_activity WHERE datname = current_database()
						AND backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) b`).Scan(&n)
					if err == nil {
						rec.fault("backends terminated", n)
					}
				}
			}
			c.run(t)
		})
	}
}

// TestNetworkFaults runs every strategy through a proxy that, every 0.2–0.6 s, either resets every connection
// (half the time), hangs every connection for 0.1–1.5 s (a quarter), or ends the holds below; it also loses the reply to some COMMITs (it committed, the client
// gets a reset), holds some COMMITs' replies until the next resume, and resets some statements instead of
// sending them. Operations without an idempotency key have a 1 s deadline, shorter than the longest hang;
// those with a key have keyedTimeout, networkKeyedTimeout in the long form.
func TestNetworkFaults(t *testing.T) {
	t.Parallel()
	p := loadParams(t).forFault("network")
	for _, s := range strategies {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			pgtest.Deadline(t, p.duration+2*time.Minute)
			direct := pgtest.NewDB(t)
			newBank(t, direct, p)
			proxy, dsn := faultnet.ForDSN(t, direct.DSN)
			proxied := &pgtest.DB{Name: direct.Name, DSN: dsn}
			check := direct.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
			c := cell{p: p, s: s, pool: workerPool(t, proxied, p), check: func(*testing.T) *pgxpool.Pool { return check },
				timeout: time.Second, keyedTimeout: keyedTimeout}
			if p.long {
				c.keyedTimeout = networkKeyedTimeout
			}
			c.serverPort = int(check.Config().ConnConfig.Port)
			c.inject = func(ctx context.Context, rec *recorder) {
				lose := proxy.OnQuery(faultnet.IsCommit, faultnet.LoseReply, faultnet.Always(), faultnet.Probability(0.03))
				hold := proxy.OnQuery(faultnet.IsCommit, faultnet.HangAfter, faultnet.Always(), faultnet.Probability(0.005))
				reset := proxy.OnQuery(func(string) bool { return true }, faultnet.ResetInstead, faultnet.Always(), faultnet.Probability(0.005))
				defer func() {
					for _, r := range []*faultnet.Rule{lose, hold, reset} {
						r.Remove()
					}
					proxy.Resume()
					rec.fault("COMMIT replies lost", lose.Fired())
					rec.fault("COMMIT replies held", hold.Fired())
					rec.fault("statements reset instead of sent", reset.Fired())
					stats := proxy.Stats()
					rec.fault("connections opened through the proxy", int(stats.Connections))
					rec.fault("of them cancel requests", int(stats.CancelRequests))
				}()
				for sleep(ctx, time.Duration(200+rand.IntN(400))*time.Millisecond) {
					switch rand.IntN(4) {
					case 0, 1:
						proxy.ResetAll()
						rec.fault("reset all", 1)
					case 2:
						proxy.Hang(faultnet.Both)
						rec.fault("hangs", 1)
						sleep(ctx, time.Duration(100+rand.IntN(1400))*time.Millisecond)
						proxy.Resume()
					default:
						proxy.Resume() // ends the holds of COMMIT replies
					}
				}
			}
			c.run(t)
		})
	}
}

// TestDeadlineWhileHung: with every connection hung, each strategy's call returns within its deadline plus
// overrunBound (plus twice the process's own stalls during the call, measured), with a context error, and the pool gets its connections back once the network recovers. It is
// not parallel, so that it runs before the workload cells start: they would stall the process it measures.
func TestDeadlineWhileHung(t *testing.T) {
	direct := pgtest.NewDB(t)
	newBank(t, direct, params{accounts: 10})
	proxy, dsn := faultnet.ForDSN(t, direct.DSN)
	pool := workerPool(t, &pgtest.DB{Name: direct.Name, DSN: dsn}, params{conns: 2})
	for _, hang := range []string{"before BEGIN", "at COMMIT"} {
		for i, s := range strategies {
			tr := transfer{op: s.name + " " + hang, from: 1, to: 2, amount: 1, keyed: i%2 == 1}
			// A warm connection first, so that the hang meets an established one.
			if err := pool.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
			var rule *faultnet.Rule
			if hang == "before BEGIN" {
				proxy.Hang(faultnet.Both)
			} else {
				rule = proxy.OnQuery(faultnet.IsCommit, faultnet.HangAfter)
			}
			const deadline = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			stopLag := measureStalls()
			start := time.Now()
			err := s.run(ctx, pool, tr)
			elapsed := time.Since(start)
			lag := stopLag()
			cancel()
			proxy.Resume()
			if rule != nil {
				rule.Remove()
			}
			_, name, ok := classify(err)
			// A keyed transfer hung at COMMIT may be settled by its key within the deadline (the time kept for
			// the look-up): nil then, and its ledger row must be there.
			settled := err == nil && hang == "at COMMIT" && tr.keyed
			if settled {
				var n int
				if qerr := direct.Pool(t).QueryRow(context.Background(), "SELECT count(*) FROM ledger WHERE op = $1", tr.op).Scan(&n); qerr != nil || n != 1 {
					t.Errorf("%s, hung %s: reported applied, %d ledger rows (%v)", s.name, hang, n, qerr)
				}
			}
			if !ok || err == nil && !settled || elapsed > deadline+overrunBound+2*lag {
				t.Errorf("%s, hung %s: returned after %v (deadline %v; the process stalled %v at worst) with %s: %v",
					s.name, hang, elapsed, deadline, lag, name, err)
			} else {
				t.Logf("%s, hung %s: %v after a %v deadline (process stall %v): %s", s.name, hang, elapsed-deadline, deadline, lag, name)
			}
		}
	}
}

// TestCrashRestart runs every strategy against a PostgreSQL server of the test's own, SIGKILLed (postmaster
// and every backend) a third of the way into the run and started again after 200 ms, crash recovery included.
func TestCrashRestart(t *testing.T) {
	t.Parallel()
	p := loadParams(t).forFault("crash")
	inst := pginstance.Start(t)
	for i, s := range strategies {
		t.Run(s.name, func(t *testing.T) {
			pgtest.Deadline(t, p.duration+2*time.Minute)
			name := "faults_" + s.name
			inst.CreateDatabase(name)
			db := &pgtest.DB{Name: name, DSN: inst.DSN(name)}
			migrate(t, db)
			newBank(t, db, p)
			c := cell{p: p, s: s, pool: workerPool(t, db, p), timeout: keyedTimeout}
			c.serverPort = inst.Port()
			c.check = func(t *testing.T) *pgxpool.Pool { return db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 }) }
			c.inject = func(ctx context.Context, rec *recorder) {
				if !rec.waitFor(ctx, p, 1.0/3) || !sleep(ctx, time.Duration(i)*37*time.Millisecond) {
					return
				}
				down := time.Now()
				inst.Kill()
				time.Sleep(200 * time.Millisecond)
				inst.Start()
				rec.fault("crash-restarts", 1)
				t.Logf("server down for %v (SIGKILL to accepting connections)", time.Since(down).Round(time.Millisecond))
				<-ctx.Done()
			}
			c.run(t)
		})
	}
}

// migrate applies pgcc's migrations (the idempotency keys' table) to db.
func migrate(t *testing.T, db *pgtest.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := schema.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
}
