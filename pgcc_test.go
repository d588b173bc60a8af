package pgcc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// raise makes the server report SQLSTATE code, so the test classifies a real *pgconn.PgError.
func raise(t *testing.T, conn *pgx.Conn, code string) error {
	t.Helper()
	_, err := conn.Exec(context.Background(), fmt.Sprintf("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '%s'; END $$", code))
	if err == nil {
		t.Fatalf("SQLSTATE %s was not raised", code)
	}
	return err
}

func TestClassifyMatchesTheConditionOfTheServersError(t *testing.T) {
	t.Parallel()
	conn := pgtest.NewDB(t).Conn(t)
	for _, tc := range []struct {
		code string
		want error
	}{
		{"40001", pgcc.ErrSerialization},
		{"40P01", pgcc.ErrDeadlock},
		{"55P03", pgcc.ErrLockNotAvailable},
		{"40003", pgcc.ErrCommitUnknown},
	} {
		raw := raise(t, conn, tc.code)
		if errors.Is(raw, tc.want) {
			t.Fatalf("%s: a bare *pgconn.PgError already matches %v", tc.code, tc.want)
		}
		wrapped := fmt.Errorf("my handler: %w", raw)
		got := pgcc.Classify(wrapped)
		var pgErr *pgconn.PgError
		if !errors.Is(got, tc.want) || !errors.As(got, &pgErr) || pgErr.Code != tc.code || got.Error() != wrapped.Error() {
			t.Errorf("%s: Classify = %v (%T); want it to match %v, keep the PgError and the message", tc.code, got, got, tc.want)
		}
		if pgcc.SQLState(got) != tc.code {
			t.Errorf("%s: SQLState = %q", tc.code, pgcc.SQLState(got))
		}
		if again := pgcc.Classify(got); again != got {
			t.Errorf("%s: classifying twice wrapped twice", tc.code)
		}
	}
	// Other errors come back unchanged.
	other := raise(t, conn, "23505")
	if got := pgcc.Classify(other); got != other {
		t.Errorf("unique violation: Classify = %v, want it unchanged", got)
	}
	if pgcc.Classify(nil) != nil {
		t.Error("Classify(nil) is not nil")
	}
	plain := errors.New("plain")
	if pgcc.Classify(plain) != plain {
		t.Error("an error without a PgError was wrapped")
	}
}

func TestFormatKeyCannotForgeALine(t *testing.T) {
	t.Parallel()
	got := pgcc.FormatKey([]string{"tenant", "id", "weird col"}, pgcc.Key{"acme\nERROR fake line", int64(7), []byte{1, 2}})
	if strings.ContainsAny(got, "\n\r") {
		t.Fatalf("FormatKey put a line break in a message: %q", got)
	}
	want := `tenant="acme\nERROR fake line" id=7 "weird col"='\x0102'`
	if got != want {
		t.Errorf("FormatKey = %s, want %s", got, want)
	}
	if got := (pgcc.Key{int32(3), "x", nil, 1.5, time.Unix(0, 0).UTC()}).String(); got != `(3, "x", NULL, 1.5, 1970-01-01T00:00:00Z)` {
		t.Errorf("Key.String = %s", got)
	}
}

func TestTypedErrorsMatchTheirSentinels(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want error
	}{
		{&pgcc.ConflictError{Table: `"a"`, Op: pgcc.OpUpdate, Key: pgcc.Key{1}, Expected: 1, Actual: 2}, pgcc.ErrConflict},
		{&pgcc.NotFoundError{Table: `"a"`, Key: pgcc.Key{1}}, pgcc.ErrNotFound},
		{&pgcc.NotFoundError{Table: `"a"`, Key: pgcc.Key{1}}, pgx.ErrNoRows},
		{&pgcc.LockError{Table: `"a"`, Keys: []pgcc.Key{{1}}}, pgcc.ErrLockNotAvailable},
		{&pgcc.RetriesExhaustedError{Attempts: 3, Err: &pgcc.ConflictError{}}, pgcc.ErrRetriesExhausted},
		{&pgcc.RetriesExhaustedError{Attempts: 3, Err: &pgcc.ConflictError{}}, pgcc.ErrConflict},
		{&pgcc.CommitUnknownError{Attempts: 1, Err: errors.New("eof")}, pgcc.ErrCommitUnknown},
		{&pgcc.InterruptedError{Attempts: 1, Cause: context.Canceled}, context.Canceled},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%T (%v) does not match %v", tc.err, tc.err, tc.want)
		}
	}
}

// Classify lets an error from the caller's own pgx call match the condition it reports, as pgcc's own errors
// do.
func ExampleClassify() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv(pgtest.EnvExampleDatabaseURL))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close(ctx)

	// A statement that gives up on a lock: here raised directly, as lock_timeout or NOWAIT would.
	_, err = conn.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'could not obtain lock' USING ERRCODE = 'lock_not_available'; END $$")
	fmt.Println(errors.Is(err, pgcc.ErrLockNotAvailable))
	err = pgcc.Classify(err)
	fmt.Println(errors.Is(err, pgcc.ErrLockNotAvailable), pgcc.SQLState(err))
	// Output:
	// false
	// true 55P03
}
