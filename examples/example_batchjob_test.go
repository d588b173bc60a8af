package examples_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/txn"
)

// One batch job per project at a time, with a job: the first caller gets the job and its fencing token;
// a second caller is told the job is already running, by whom and until when (an HTTP API would answer 409
// with that). Keep renews the lease in the background and cancels the job's context if the lease is lost;
// every write of the job checks its token with lease.Guard in the same transaction, so a worker that stalled
// past its TTL and lost the job cannot write over its successor.
func Example_batchJobPerProject() {
	ctx := context.Background()
	pool, drop, err := open(ctx, `CREATE TABLE example_reports (project text PRIMARY KEY, rows_done bigint NOT NULL)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop("example_reports")
	leases := lease.New(pool)

	job, err := leases.TryAcquire(ctx, "report/project-7", "worker-1", time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer job.Release(ctx)
	work, keeper := job.Keep(ctx) // renews every TTL/3; work ends if the lease is lost
	defer keeper.Stop()

	// A second request for the same project while the job runs.
	_, err = leases.TryAcquire(ctx, "report/project-7", "worker-2", time.Minute)
	var held *lease.HeldError
	if errors.As(err, &held) {
		fmt.Printf("already running: held by %s for another ~%v\n", held.Holder, time.Until(held.Until).Round(time.Minute))
	}

	// The job's writes, each guarded by the token.
	for batch := 1; batch <= 3; batch++ {
		err := txn.Run(work, pool, func(ctx context.Context, tx pgx.Tx) error {
			if err := lease.Guard(ctx, tx, job.Name, job.Token); err != nil {
				return err // pgcc.ErrFenced: we lost the job; stop without writing
			}
			_, err := tx.Exec(ctx, `INSERT INTO example_reports VALUES ('project-7', $1)
				ON CONFLICT (project) DO UPDATE SET rows_done = excluded.rows_done`, batch*1000)
			return err
		})
		if err != nil {
			fmt.Println(err) // context.Cause(work) says why, when the lease was lost
			return
		}
	}
	var done int64
	_ = pool.QueryRow(ctx, `SELECT rows_done FROM example_reports WHERE project = 'project-7'`).Scan(&done)
	fmt.Println("rows done:", done)
	// Output:
	// already running: held by worker-1 for another ~1m0s
	// rows done: 3000
}
