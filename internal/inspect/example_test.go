package inspect_test

import (
	"os"
	"time"

	"github.com/pgcc/pgcc/internal/inspect"
)

// Rendering a snapshot: one session holds a lock in an idle transaction, two wait for it, the second also
// queued behind the first.
func ExampleSnapshot_Render() {
	snap := &inspect.Snapshot{
		Taken: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC),
		Sessions: []inspect.Session{
			{PID: 101, Application: "billing", State: "idle in transaction", InTransaction: 42 * time.Second,
				Query: "UPDATE accounts SET balance = balance - 10 WHERE id = 7"},
			{PID: 202, Application: "api", State: "active", WaitEvent: "Lock:transactionid", Waiting: 3 * time.Second,
				WaitingFor: "ShareLock on transactionid", InTransaction: 3 * time.Second, BlockedBy: []int32{101},
				Query: "SELECT * FROM accounts WHERE id = 7 FOR UPDATE"},
			{PID: 303, Application: "api", State: "active", WaitEvent: "Lock:tuple", Waiting: time.Second,
				WaitingFor: `ExclusiveLock on tuple "accounts"`, InTransaction: time.Second, BlockedBy: []int32{202},
				Query: "SELECT * FROM accounts WHERE id = 7 FOR UPDATE"},
		},
	}
	_ = snap.Render(os.Stdout, 40)
	// Output:
	// 2026-11-23 09:00:00: 2 session(s) waiting for a lock
	// pid 101  app=billing  idle in transaction  tx open 42s  "UPDATE accounts SET balance = balance -…"
	// └─ pid 202  app=api  active  tx open 3s  waiting 3s for ShareLock on transactionid  "SELECT * FROM accounts WHERE id = 7 FOR…"
	//    └─ pid 303  app=api  active  tx open 1s  waiting 1s for ExclusiveLock on tuple "accounts"  "SELECT * FROM accounts WHERE id = 7 FOR…"
}
