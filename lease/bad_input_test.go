package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
)

// TestBadLeaseInputRefused: TTLs below a millisecond, names and holders that are empty, invalid UTF-8,
// contain NUL or exceed MaxNameBytes (16 KiB came back as raw 22021/54000 errors), nil handles (typed nils
// included) and hand-made leases are refused with ErrInvalidArgument, before anything is sent, never a panic.
func TestBadLeaseInputRefused(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	big := strings.Repeat("n", 16<<10)
	for name, err := range map[string]error{
		"TTL 0":              acquireErr(leases.TryAcquire(ctx, "job", "me", 0)),
		"negative TTL":       acquireErr(leases.TryAcquire(ctx, "job", "me", -time.Second)),
		"TTL below 1ms":      acquireErr(leases.TryAcquire(ctx, "job", "me", time.Microsecond)),
		"empty name":         acquireErr(leases.TryAcquire(ctx, "", "me", time.Minute)),
		"bad UTF-8 name":     acquireErr(leases.TryAcquire(ctx, "jo\xffb", "me", time.Minute)),
		"16 KiB name":        acquireErr(leases.TryAcquire(ctx, big, "me", time.Minute)),
		"NUL in the name":    acquireErr(leases.TryAcquire(ctx, "jo\x00b", "me", time.Minute)),
		"empty holder":       acquireErr(leases.TryAcquire(ctx, "job", "", time.Minute)),
		"bad UTF-8 holder":   acquireErr(leases.TryAcquire(ctx, "job", "m\xffe", time.Minute)),
		"16 KiB holder":      acquireErr(leases.TryAcquire(ctx, "job", big, time.Minute)),
		"NUL in the holder":  acquireErr(leases.TryAcquire(ctx, "job", "m\x00e", time.Minute)),
		"Acquire, TTL 0":     acquireErr(leases.Acquire(ctx, "job", "me", 0)),
		"nil Leases":         acquireErr((*lease.Leases)(nil).TryAcquire(ctx, "job", "me", time.Minute)),
		"New(nil)":           acquireErr(lease.New(nil).TryAcquire(ctx, "job", "me", time.Minute)),
		"New(typed nil)":     acquireErr(lease.New((*pgxpool.Pool)(nil)).Acquire(ctx, "job", "me", time.Minute)),
		"Renew, nil":         (*lease.Lease)(nil).Renew(ctx),
		"Release, nil":       (*lease.Lease)(nil).Release(ctx),
		"Renew, TTL 0":       (&lease.Lease{Name: "job", Token: 1}).Renew(ctx),
		"Release, hand-made": (&lease.Lease{Name: "job", Token: 1, TTL: time.Minute}).Release(ctx),
		"Guard, nil tx":      lease.Guard(ctx, nil, "job", 1),
		"Guard, typed nil":   lease.Guard(ctx, (*pgxpool.Tx)(nil), "job", 1),
	} {
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	inTx(t, pool, func(tx pgx.Tx) {
		for name, err := range map[string]error{
			"Guard, 16 KiB name":      lease.Guard(ctx, tx, big, 1),
			"Guard, NUL":              lease.Guard(ctx, tx, "a\x00b", 1),
			"Guard, two timeouts":     lease.Guard(ctx, tx, "job", 1, lease.WithTimeout(time.Second), lease.WithTimeout(2*time.Second)),
			"Guard, 25-day timeout":   lease.Guard(ctx, tx, "job", 1, lease.WithTimeout(25*24*time.Hour)),
			"Guard, nil option":       lease.Guard(ctx, tx, "job", 1, nil),
			"Guard, typed nil handle": lease.Guard(ctx, tx, "job", 1, lease.WithDiagnostics((*pgxpool.Pool)(nil))),
		} {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
		}
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Error("transaction unusable: something was sent")
		}
	})
	if n := queryInt(t, pool, "SELECT count(*) FROM pgcc.leases"); n != 0 {
		t.Errorf("%d lease rows written by refused calls", n)
	}
	// A Renew that was refused left the lease alone; one with a valid TTL works, at the limit of the name size.
	name := strings.Repeat("é", lease.MaxNameBytes/2)
	l, err := leases.TryAcquire(ctx, name, "me", time.Minute)
	if err != nil {
		t.Fatalf("a %d-byte name: %v", len(name), err)
	}
	if err := l.Renew(ctx); err != nil {
		t.Fatal(err)
	}
}

func acquireErr(_ *lease.Lease, err error) error { return err }

// TestMissingLeaseTableSaysWhatToRun: without pgcc's migrations, a lease call fails with an error that says
// to apply them, and still carries the server's error.
func TestMissingLeaseTableSaysWhatToRun(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "DROP SCHEMA pgcc CASCADE"); err != nil {
		t.Fatal(err)
	}
	_, err := lease.New(pool).TryAcquire(ctx, "job", "me", time.Minute)
	var pgErr *pgconn.PgError
	if err == nil || !strings.Contains(err.Error(), "migrations.Up") || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.UndefinedTable {
		t.Errorf("err = %v, want a hint to run migrations.Up and the 42P01 error", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return lease.Guard(ctx, tx, "job", 1) })
	if err == nil || !strings.Contains(err.Error(), "migrations.Up") {
		t.Errorf("Guard = %v, want the hint", err)
	}
}
