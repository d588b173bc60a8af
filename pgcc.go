package pgcc

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DBTX is what a function needs to run single statements: *pgxpool.Pool, *pgxpool.Conn, *pgx.Conn, pgx.Tx
// and the DBTX interface sqlc generates all satisfy it. Every pgcc function that runs statements without
// starting a transaction of its own takes a DBTX.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Beginner is what a function needs to start a transaction: *pgxpool.Pool, *pgxpool.Conn, *pgx.Conn and
// pgx.Tx (whose Begin starts a savepoint) all satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var (
	_ DBTX     = (*pgxpool.Pool)(nil)
	_ DBTX     = (*pgxpool.Conn)(nil)
	_ DBTX     = (*pgx.Conn)(nil)
	_ DBTX     = pgx.Tx(nil)
	_ Beginner = (*pgxpool.Pool)(nil)
	_ Beginner = (*pgxpool.Conn)(nil)
	_ Beginner = (*pgx.Conn)(nil)
	_ Beginner = pgx.Tx(nil)
)

// Key identifies one row: one value per key column, in the order of the table's key columns. Key{42} is a
// one-column key, Key{"acme", 7} a two-column one. Every package takes and reports keys as a Key.
type Key []any

// String renders the key as (42) or ("acme", 7), with [FormatValue]'s quoting.
func (k Key) String() string {
	var b strings.Builder
	b.WriteByte('(')
	for i, v := range k {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(FormatValue(v))
	}
	b.WriteByte(')')
	return b.String()
}

// FormatKey renders key for messages as id=42 or tenant="acme" id=7, naming each value by its column (cols
// in key order; a value without a column name is named key1, key2, …). Values are rendered by
// [FormatValue], so a key containing quotes or newlines cannot forge a log line.
func FormatKey(cols []string, key Key) string {
	var b strings.Builder
	for i, v := range key {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i < len(cols) {
			b.WriteString(formatName(cols[i]))
		} else {
			b.WriteString("key")
			b.WriteString(strconv.Itoa(i + 1))
		}
		b.WriteByte('=')
		b.WriteString(FormatValue(v))
	}
	return b.String()
}

// FormatValue renders one key or version value for messages and logs: integers and booleans as Go prints
// them, floats with strconv's shortest form, []byte as hex, time.Time in RFC 3339 with nanoseconds, nil as
// NULL, and everything else (strings included) as a Go quoted string, so that no value can put a newline,
// a quote or a control character into a message.
func FormatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case int:
		return strconv.FormatInt(int64(v), 10)
	case int8:
		return strconv.FormatInt(int64(v), 10)
	case int16:
		return strconv.FormatInt(int64(v), 10)
	case int32:
		return strconv.FormatInt(int64(v), 10)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint:
		return strconv.FormatUint(uint64(v), 10)
	case uint8:
		return strconv.FormatUint(uint64(v), 10)
	case uint16:
		return strconv.FormatUint(uint64(v), 10)
	case uint32:
		return strconv.FormatUint(uint64(v), 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float32:
		return strconv.FormatFloat(float64(v), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case []byte:
		return fmt.Sprintf("'\\x%x'", v)
	case time.Time:
		return v.Format(time.RFC3339Nano)
	case string:
		return strconv.Quote(v)
	case fmt.Stringer:
		return strconv.Quote(v.String())
	default:
		return strconv.Quote(fmt.Sprint(v))
	}
}

// formatName renders a column or table name for messages: as it is when it is a plain identifier, quoted
// otherwise.
func formatName(name string) string {
	if name == "" || !utf8.ValidString(name) {
		return strconv.Quote(name)
	}
	for _, r := range name {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return strconv.Quote(name)
		}
	}
	return name
}
