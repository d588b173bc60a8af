package examples_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

// Task is a row of example_tasks, a queue table without a version column: lock.NewTable describes it (a
// repo.Table needs a version).
type Task struct {
	ID      int64  `db:"id"`
	Payload string `db:"payload"`
	Done    bool   `db:"done"`
}

// A job queue with SKIP LOCKED: four workers claim batches of up to 10 pending tasks with lock.Claim, each
// batch locked by one worker only while the others skip past it; a worker marks its tasks done before it
// commits. Every task is processed exactly once and no worker ever waits for another.
func Example_jobQueue() {
	ctx := context.Background()
	pool, drop, err := open(ctx, `CREATE TABLE example_tasks (id bigint PRIMARY KEY, payload text NOT NULL, done boolean NOT NULL DEFAULT false,
			processed int NOT NULL DEFAULT 0);
		INSERT INTO example_tasks (id, payload) SELECT g, 'task ' || g FROM generate_series(1, 250) g`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop("example_tasks")
	tasks, err := lock.NewTable[Task]("example_tasks")
	if err != nil {
		fmt.Println(err)
		return
	}

	var processed atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := txn.RunValue(ctx, pool, func(ctx context.Context, tx pgx.Tx) (int, error) {
					batch, err := lock.Claim(ctx, tx, tasks, 10, lock.Where("NOT done"))
					if err != nil {
						return 0, err
					}
					ids := make([]int64, len(batch))
					for i, task := range batch {
						// ... do the work for task.Payload ...
						ids[i] = task.ID
					}
					_, err = tx.Exec(ctx, "UPDATE example_tasks SET done = true, processed = processed + 1 WHERE id = ANY($1)", ids)
					return len(batch), err
				})
				if err != nil {
					fmt.Println(err)
					return
				}
				if n == 0 {
					return
				}
				processed.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	var done, twice int
	_ = pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE done), count(*) FILTER (WHERE processed > 1) FROM example_tasks`).Scan(&done, &twice)
	fmt.Println(processed.Load(), done, twice)
	// Output:
	// 250 250 0
}
