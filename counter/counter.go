package counter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// DefaultSlots is the number of slots of a Counter unless [WithSlots] says otherwise: about the number of
// increments that can commit at the same time on one counter.
const DefaultSlots = 16

// maxSlots bounds [WithSlots]: a read sums every slot.
const maxSlots = 4096

// Option configures [New].
type Option func(*config)

type config struct {
	schema  string
	slots   int
	invalid []string
}

// WithSlots sets the number of slots, 1 to 4096. More slots let more increments commit at once, and make
// every read sum more rows. Changing it for an existing table is safe: a read sums whatever slots exist.
func WithSlots(n int) Option {
	return func(c *config) {
		if n < 1 || n > maxSlots {
			c.invalid = append(c.invalid, fmt.Sprintf("WithSlots(%d): want 1..%d", n, maxSlots))
			return
		}
		c.slots = n
	}
}

// InSchema qualifies the table with a schema; without it the table is found through the search_path.
func InSchema(schema string) Option {
	return func(c *config) {
		if schema == "" {
			c.invalid = append(c.invalid, "InSchema with an empty schema name")
			return
		}
		c.schema = schema
	}
}

// Counter is a set of slotted counters, by name, in one table of the shape the package documentation gives.
// It holds only the SQL, built once by [New], and is safe for concurrent use.
type Counter struct {
	table   string // quoted, schema-qualified
	slots   int
	add     string
	get     string
	compact string
	create  string
}

// New describes the counters table table. A name PostgreSQL would not keep as given (empty, with a NUL
// byte, invalid UTF-8, longer than 63 bytes) or an invalid option is an error matching
// [pgcc.ErrInvalidArgument].
func New(table string, opts ...Option) (*Counter, error) {
	cfg := config{slots: DefaultSlots}
	for _, o := range opts {
		if o == nil {
			cfg.invalid = append(cfg.invalid, "a nil Option")
			continue
		}
		o(&cfg)
	}
	names := []string{table}
	if cfg.schema != "" {
		names = append(names, cfg.schema)
	}
	for _, n := range names {
		if n == "" || strings.IndexByte(n, 0) >= 0 || !utf8.ValidString(n) || len(n) > 63 {
			cfg.invalid = append(cfg.invalid, fmt.Sprintf("name %q: want 1 to 63 bytes of valid UTF-8 without NUL", n))
		}
	}
	if len(cfg.invalid) > 0 {
		return nil, fmt.Errorf("%w: counter table %q: %s", pgcc.ErrInvalidArgument, table, strings.Join(cfg.invalid, "; "))
	}
	id := pgx.Identifier{table}
	if cfg.schema != "" {
		id = pgx.Identifier{cfg.schema, table}
	}
	t := id.Sanitize()
	return &Counter{
		table: t,
		slots: cfg.slots,
		add: "INSERT INTO " + t + " AS c (name, slot, value) VALUES ($1, $2, $3) " +
			"ON CONFLICT (name, slot) DO UPDATE SET value = c.value + EXCLUDED.value",
		get: "SELECT coalesce(sum(value), 0)::bigint FROM " + t + " WHERE name = $1",
		// One statement, so atomic: the slots other than 0 are deleted and their sum added to slot 0. A
		// concurrent Add to a slot being deleted waits for the delete and then inserts the slot afresh; a
		// delete that meets a slot updated since its snapshot deletes (and counts) the updated value.
		compact: "WITH moved AS (DELETE FROM " + t + " WHERE name = $1 AND slot <> 0 RETURNING value) " +
			"INSERT INTO " + t + " AS c (name, slot, value) SELECT $1, 0, coalesce(sum(value), 0)::bigint FROM moved " +
			"ON CONFLICT (name, slot) DO UPDATE SET value = c.value + EXCLUDED.value",
		create: "CREATE TABLE IF NOT EXISTS " + t + " (name text NOT NULL, slot int NOT NULL, value bigint NOT NULL, PRIMARY KEY (name, slot))",
	}, nil
}

// Table returns the counters table's quoted, schema-qualified name.
func (c *Counter) Table() string { return c.table }

// Slots returns the number of slots Add spreads over.
func (c *Counter) Slots() int { return c.slots }

// CreateTable creates the counters table if it does not exist. ctx governs the statement.
func (c *Counter) CreateTable(ctx context.Context, db pgcc.DBTX) error {
	if err := c.check("CreateTable", db, "x"); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, c.create); err != nil {
		return fmt.Errorf("pgcc: creating counters table %s: %w", c.table, err)
	}
	return nil
}

// Add adds delta (which may be negative) to the counter name, in a slot chosen at random, in one statement.
// Outside a transaction, a statement whose connection failed after it was sent is a
// [*pgcc.CommitUnknownError]: the addition may have been applied, and repeating it may count it twice. One
// whose connection could not be made (the server down or out of connection slots) is a
// [*pgcc.ConnectionLostError]: nothing was sent, and it may be repeated. ctx governs the statement.
func (c *Counter) Add(ctx context.Context, db pgcc.DBTX, name string, delta int64) error {
	if err := c.check("Add", db, name); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, c.add, name, rand.IntN(c.slots), delta); err != nil {
		return pgfail.Autocommit(db, fmt.Errorf("pgcc: add to counter %q in %s: %w", name, c.table, err))
	}
	return nil
}

// Get returns the counter's value: the sum of its slots as of one snapshot, 0 for a counter never added to.
// ctx governs the query.
func (c *Counter) Get(ctx context.Context, db pgcc.DBTX, name string) (int64, error) {
	if err := c.check("Get", db, name); err != nil {
		return 0, err
	}
	var n int64
	if err := db.QueryRow(ctx, c.get, name).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgcc: read counter %q in %s: %w", name, c.table, err)
	}
	return n, nil
}

// Compact folds the counter's slots into one row (slot 0) in one statement, keeping its value: run it now
// and then (from a periodic job) for counters whose slots have accumulated, or before dropping the slot
// count. It is safe while others Add: no increment is lost or counted twice, though adds to the slots being
// folded wait for it. ctx governs the statement; a connection lost after it was sent leaves the counter's
// value correct either way.
func (c *Counter) Compact(ctx context.Context, db pgcc.DBTX, name string) error {
	if err := c.check("Compact", db, name); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, c.compact, name); err != nil {
		return fmt.Errorf("pgcc: compact counter %q in %s: %w", name, c.table, err)
	}
	return nil
}

func (c *Counter) check(op string, db pgcc.DBTX, name string) error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: %s on a nil *counter.Counter", pgcc.ErrInvalidArgument, op)
	case db == nil:
		return fmt.Errorf("%w: %s on %s: the database handle is nil", pgcc.ErrInvalidArgument, op, c.table)
	case name == "" || strings.IndexByte(name, 0) >= 0 || !utf8.ValidString(name):
		return fmt.Errorf("%w: %s on %s: counter name %s: want non-empty valid UTF-8 without NUL", pgcc.ErrInvalidArgument, op, c.table, strconv.Quote(name))
	}
	return nil
}
