package repo

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// VersionKind says what a table's version is and how a write changes it. The kind decides the
// compare-and-swap predicate and the new version in the SQL [NewTable] builds.
type VersionKind int

const (
	// VersionCounter is an integer column that Insert sets to 1 and every write that changes a value
	// increments by one. It is the default, in the column "version" unless [WithVersion] names another. A row
	// at version 0 is an ordinary row (Rails, JPA and `ADD COLUMN version … DEFAULT 0` start there), and a NULL
	// version reads as 0 and is written as 1, as Rails does.
	VersionCounter VersionKind = iota
	// VersionXmin is PostgreSQL's xmin system column: the id of the transaction that wrote the row version,
	// which changes with every UPDATE, so tables need no column of their own. See [WithXmin].
	VersionXmin
	// VersionTimestamp is a timestamp column (an updated_at) that the database sets on every write that changes
	// a value: to clock_timestamp(), but at least one microsecond after the row's previous timestamp, so that it
	// strictly increases even for two writes in one microsecond or when the clock steps back. See
	// [WithTimestampVersion].
	VersionTimestamp
)

// String returns "counter", "xmin" or "timestamp".
func (k VersionKind) String() string {
	switch k {
	case VersionCounter:
		return "counter"
	case VersionXmin:
		return "xmin"
	case VersionTimestamp:
		return "timestamp"
	default:
		return fmt.Sprintf("VersionKind(%d)", int(k))
	}
}

// TableOption configures [NewTable]. Options are applied in order; a later one overrides an earlier one of
// the same kind.
type TableOption func(*tableConfig)

type tableConfig struct {
	schema    string
	schemaSet bool
	key       []string
	version   string
	kind      VersionKind
	defaults  []string
	observer  pgcc.Observer
	invalid   []string
}

// InSchema qualifies the table with a schema. Without it the table is found through the connection's
// search_path, as an unqualified name in SQL is. An empty schema name is refused: leave the option out
// instead.
func InSchema(schema string) TableOption {
	return func(c *tableConfig) { c.schema, c.schemaSet = schema, true }
}

// WithKey names the key columns, which together identify one row (a primary key or another unique key). The
// default is a single column "id". Key values are passed, and reported in errors, in this order.
func WithKey(cols ...string) TableOption {
	return func(c *tableConfig) {
		if len(cols) == 0 {
			c.invalid = append(c.invalid, "WithKey needs at least one column")
			return
		}
		c.key = append([]string(nil), cols...)
	}
}

// WithVersion names the version column of a [VersionCounter] table; the default is "version". Its field must
// be an int64 or a uint64 (int and uint on 64-bit platforms): a narrower Go type would wrap around silently,
// while the column itself may be any integer type, whose overflow PostgreSQL reports (SQLSTATE 22003).
func WithVersion(col string) TableOption {
	return func(c *tableConfig) {
		c.version = col
		c.kind = VersionCounter
	}
}

// WithXmin uses PostgreSQL's xmin system column as the version ([VersionXmin]), for tables that have no
// version column. T needs a uint32 field for the column "xmin" (tag it `db:"xmin"`): xmin is of type xid, a
// 32-bit transaction id, which pgx.RowToStructByName scans into a uint32 only. Table's own statements read
// it as xmin::text::bigint, and errors carry it as an int64. Caveats, documented in docs/optimistic.md: xmin
// is a 32-bit transaction id, so versions are only compared for equality, never ordered; every write inside
// one transaction leaves the same xmin; and every write changes it, even one that changes no value.
func WithXmin() TableOption {
	return func(c *tableConfig) {
		c.version = "xmin"
		c.kind = VersionXmin
	}
}

// WithTimestampVersion uses the timestamp column col (timestamptz, or timestamp without time zone) as the
// version ([VersionTimestamp]), for tables that carry an updated_at and no counter, as many Rails and Django
// tables do. T needs a time.Time field for it.
//
// The database sets the timestamp, never the client: Insert writes clock_timestamp() and every write that
// changes a value writes greatest(clock_timestamp(), the old value + 1 µs), so versions strictly increase per
// row. Comparisons happen in the database at its microsecond precision, and Table truncates a time.Time it
// is given to the microsecond, so Go's nanoseconds never cause a false conflict. [Table.VersionOf] and the
// Expected and Actual fields of a [*pgcc.ConflictError] give the version in microseconds since the Unix epoch
// (ExpectedTime and ActualTime as timestamps), which is what [ETag] encodes. For a timestamp without time zone
// column the clock is read in the session's TimeZone; set it to UTC (Rails' convention) in the pool's
// configuration. The column must be NOT NULL: a NULL timestamp cannot be read into a time.Time. Every writer
// of the table must set the column the same way (through repo, or with the expression above in its own SQL or
// a trigger): a timestamp set with now() can repeat or go back in time, and so match a version a client still
// holds. docs/optimistic.md says when a counter is the better choice.
func WithTimestampVersion(col string) TableOption {
	return func(c *tableConfig) {
		c.version = col
		c.kind = VersionTimestamp
	}
}

// WithInsertDefaults names columns that [Table.Insert] leaves to their DEFAULT (a serial or identity key, a
// created_at timestamp) and reads back into the row with RETURNING. They are still read by Get and written by
// Update like any other column.
func WithInsertDefaults(cols ...string) TableOption {
	return func(c *tableConfig) { c.defaults = append(c.defaults, cols...) }
}

// WithObserver reports the table's optimistic conflicts to o ([pgcc.ConflictEvent]), and the attempts of
// [Table.Modify] when it runs on a pool or connection. A statement run on the pgx.Tx of a txn.Run given
// txn.WithObserver reports to that observer instead, with the transaction's label. A nil o attaches nothing.
func WithObserver(o pgcc.Observer) TableOption {
	return func(c *tableConfig) { c.observer = o }
}

// Tracked, embedded in a row struct, makes a [Table] remember the key each row was read with (by Get, Modify,
// InsertOrGet or Upsert) or written with (by Insert), so that a write of a row whose key field was changed
// since is refused with [pgcc.ErrInvalidArgument], before anything is sent:
//
//	type Account struct {
//		repo.Tracked
//		ID      int64 `db:"id"`
//		…
//	}
//
// Without it the key fields are all a Table knows of a row's identity: an Update or Delete of a struct whose
// key was edited goes to the row that has the new key, and succeeds when that row happens to be at the same
// version. Tracked holds no column and is skipped by pgx.RowToStructByName; a row that was not read through
// the Table (scanned by pgx, built from a request, loaded by lock.Load) has nothing recorded and is written by
// its key fields as usual. Copying a row copies what it recorded.
type Tracked struct {
	key pgcc.Key // the key as read or inserted; nil when the row was not read through a Table
}

// field is where a column lives in T.
type field struct {
	index []int
	typ   reflect.Type
}

// Table is a typed description of a table whose rows map to T, with its key and version, and the SQL to read
// and write them, built once by [NewTable]. Its description never changes after NewTable (only statements
// for new column lists and write options, and the column types the bulk statements need, are added to its
// caches), and it is safe for concurrent use.
//
// A nil *Table is refused by every method that returns an error (with [pgcc.ErrInvalidArgument]); the
// accessors return zero values for it.
type Table[T any] struct {
	d       desc
	sql     statements
	quoted  string   // the table's quoted name, for messages
	keyCols []string // key column names, for errors
	fields  []field  // per column of d.cols
	version field
	tracked []int // index of the embedded Tracked, nil when T embeds none
	// observer is WithObserver's, nil for none; a transaction's observer wins over it (see observeConflict).
	observer pgcc.Observer

	partial sync.Map                       // partialKey → *partialStmt, for UpdateColumns and write options
	atomic  sync.Map                       // atomicKey → string, the statements of Add
	bulk    atomic.Pointer[bulkStatements] // the bulk statements, built on first use from the catalog
}

// partialStmt is a cached UPDATE of some columns.
type partialStmt struct {
	set   []int
	sql   string
	final string // the same as a final write (finalUpdateSQL), for a counter table with the check
}

// NewTable describes the table name whose rows map to the struct T, as pgx.RowToStructByName maps them: an
// exported field is the column named by its `db` tag, or, untagged, by its name in lower case; a field
// tagged `db:"-"` is skipped, and an embedded struct contributes its fields. Tag a field whose column name
// has underscores or capitals.
//
// NewTable checks everything it can without a database and builds every statement: names must be non-empty,
// valid UTF-8, free of NUL bytes and at most 63 bytes long (any other name works, quoted with
// pgx.Identifier.Sanitize: spaces, quotes, reserved words); T must have a field for each key column and for
// the version column, of a type that suits the version kind: int64 or uint64 for a counter (int and uint on
// 64-bit platforms; narrower types would wrap around), uint32 for xmin, time.Time for a timestamp. A mismatch
// or an option that cannot be honoured is an error matching [pgcc.ErrInvalidArgument] naming the field or
// option. That the columns exist in the database is found at the first statement.
func NewTable[T any](name string, opts ...TableOption) (*Table[T], error) {
	cfg := tableConfig{key: []string{"id"}, version: "version"}
	for _, o := range opts {
		if o == nil {
			cfg.invalid = append(cfg.invalid, "nil option")
			continue
		}
		o(&cfg)
	}
	if cfg.schemaSet && cfg.schema == "" {
		cfg.invalid = append(cfg.invalid, "InSchema with an empty schema name (leave the option out to use the search_path)")
	}
	if len(cfg.invalid) > 0 {
		return nil, fmt.Errorf("%w: table %q: %s", pgcc.ErrInvalidArgument, name, strings.Join(cfg.invalid, "; "))
	}

	typ := reflect.TypeFor[T]()
	if typ.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: table %q: rows must be a struct type, not %v", pgcc.ErrInvalidArgument, name, typ)
	}
	t := &Table[T]{d: desc{schema: cfg.schema, table: name, kind: cfg.kind}, observer: cfg.observer}
	mapFields(typ, nil, true, &t.d.cols, &t.fields, &t.tracked)
	if err := t.d.validate(); err != nil {
		return nil, err
	}
	pos := func(col string) int {
		for i, c := range t.d.cols {
			if c == col {
				return i
			}
		}
		return -1
	}
	for _, k := range cfg.key {
		if err := checkName(name, "key column", k); err != nil {
			return nil, err
		}
		p := pos(k)
		if p < 0 {
			return nil, fmt.Errorf("%w: table %q: struct %v has no field for key column %q (tag a field `db:%q`)", pgcc.ErrInvalidArgument, name, typ, k, k)
		}
		if contains(t.d.key, p) {
			return nil, fmt.Errorf("%w: table %q: key column %q given twice", pgcc.ErrInvalidArgument, name, k)
		}
		t.d.key = append(t.d.key, p)
	}
	if err := checkName(name, "version column", cfg.version); err != nil {
		return nil, err
	}
	t.d.version = pos(cfg.version)
	if t.d.version < 0 {
		return nil, fmt.Errorf("%w: table %q: struct %v has no field for %s version column %q (tag a field `db:%q`)", pgcc.ErrInvalidArgument, name, typ, cfg.kind, cfg.version, cfg.version)
	}
	if t.d.isKey(t.d.version) {
		return nil, fmt.Errorf("%w: table %q: version column %q is also a key column", pgcc.ErrInvalidArgument, name, cfg.version)
	}
	t.version = t.fields[t.d.version]
	if problem := versionFieldProblem(cfg.kind, t.version.typ); problem != "" {
		return nil, fmt.Errorf("%w: table %q: the field for %s version column %q is %v; %s", pgcc.ErrInvalidArgument, name, cfg.kind, cfg.version, t.version.typ, problem)
	}
	for _, c := range cfg.defaults {
		p := pos(c)
		switch {
		case p < 0:
			return nil, fmt.Errorf("%w: table %q: WithInsertDefaults: struct %v has no field for column %q", pgcc.ErrInvalidArgument, name, typ, c)
		case p == t.d.version:
			return nil, fmt.Errorf("%w: table %q: WithInsertDefaults: the version column %q is set by Insert itself", pgcc.ErrInvalidArgument, name, c)
		case !contains(t.d.defaults, p):
			t.d.defaults = append(t.d.defaults, p)
		}
	}
	t.sql = t.d.build()
	t.quoted = t.d.ident().Sanitize()
	for _, k := range t.d.key {
		t.keyCols = append(t.keyCols, t.d.cols[k])
	}
	return t, nil
}

var (
	timeType    = reflect.TypeFor[time.Time]()
	trackedType = reflect.TypeFor[Tracked]()
)

// versionFieldProblem says why a field of type typ cannot hold a version of kind, or "" when it can. Only
// types that cannot wrap around in practice are accepted: an int8 at 127 would become -128 and the next write
// would still succeed.
func versionFieldProblem(kind VersionKind, typ reflect.Type) string {
	switch kind {
	case VersionXmin:
		if typ.Kind() != reflect.Uint32 {
			return "it must be uint32, the width of PostgreSQL's xid, which pgx scans only into unsigned 32-bit integers"
		}
	case VersionTimestamp:
		if typ != timeType {
			return "it must be time.Time"
		}
	default:
		switch typ.Kind() {
		case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
			if typ.Size() == 8 {
				return ""
			}
			return "it must be int64 or uint64: a 32-bit integer would wrap around"
		case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16, reflect.Uint32:
			return "it must be int64 or uint64: a narrower integer would wrap around (the column may be narrower; PostgreSQL reports its overflow)"
		default:
			return "it must be an integer type, int64 or uint64"
		}
	}
	return ""
}

// mapFields appends T's columns and fields in struct order, with pgx.RowToStructByName's rules, and records
// where an embedded Tracked is, when the path to it is exported (exported says so of prefix), as reflection
// needs to set it.
func mapFields(typ reflect.Type, prefix []int, exported bool, cols *[]string, fields *[]field, tracked *[]int) {
	for i := range typ.NumField() {
		sf := typ.Field(i)
		index := append(append([]int(nil), prefix...), i)
		if sf.Anonymous && sf.Type == trackedType {
			if *tracked == nil && exported {
				*tracked = index
			}
			continue
		}
		if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			mapFields(sf.Type, index, exported && sf.IsExported(), cols, fields, tracked)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		col, tagged := sf.Tag.Lookup("db")
		col, _, _ = strings.Cut(col, ",")
		if col == "-" {
			continue
		}
		if !tagged {
			col = strings.ToLower(sf.Name)
		}
		*cols = append(*cols, col)
		*fields = append(*fields, field{index: index, typ: sf.Type})
	}
}

// Identifier returns the table's name, schema-qualified when [InSchema] was given, unquoted: quote it with
// its Sanitize method.
func (t *Table[T]) Identifier() pgx.Identifier {
	if t == nil {
		return nil
	}
	return t.d.ident()
}

// Name returns the table's quoted, schema-qualified name, as used in SQL and in error messages.
func (t *Table[T]) Name() string {
	if t == nil {
		return ""
	}
	return t.quoted
}

// Kind returns the table's version kind.
func (t *Table[T]) Kind() VersionKind {
	if t == nil {
		return VersionCounter
	}
	return t.d.kind
}

// KeyColumns returns the key columns' names, unquoted, in key order.
func (t *Table[T]) KeyColumns() []string {
	if t == nil {
		return nil
	}
	return append([]string(nil), t.keyCols...)
}

// SelectColumns returns the names, unquoted, of every column T maps, in struct order: selecting them
// (quoted) and scanning with pgx.RowToStructByName[T] fills a T. For a [VersionXmin] table the list
// contains "xmin", the system column of type xid, which pgx scans into the uint32 field [WithXmin] asks
// for. A NULL counter version cannot be scanned this way; [Table.Get] reads it as 0.
func (t *Table[T]) SelectColumns() []string {
	if t == nil {
		return nil
	}
	return append([]string(nil), t.d.cols...)
}

// VersionColumn returns the version column's name: "version" by default, "xmin" for [VersionXmin].
func (t *Table[T]) VersionColumn() string {
	if t == nil {
		return ""
	}
	return t.d.cols[t.d.version]
}

// KeyOf returns row's key, in key order; nil for a nil row.
func (t *Table[T]) KeyOf(row *T) pgcc.Key {
	if t == nil || row == nil {
		return nil
	}
	return t.keyValues(reflect.ValueOf(row).Elem())
}

// VersionOf returns row's version as an int64: the counter, the xmin, or for a [VersionTimestamp] table the
// timestamp in microseconds since the Unix epoch (0 for the zero time). It is what [ETag] encodes and what
// [Table.Check] and [pgcc.ConflictError] carry. 0 for a nil row.
func (t *Table[T]) VersionOf(row *T) int64 {
	if t == nil || row == nil {
		return 0
	}
	return t.versionOf(reflect.ValueOf(row).Elem().FieldByIndex(t.version.index))
}

// SetVersion sets row's version from an int64 as [Table.VersionOf] returns it (from an If-Match header
// parsed by [ParseETag], say). A value the version field cannot hold (a negative or too large xmin) is an
// error matching [pgcc.ErrInvalidArgument], and row is left unchanged.
func (t *Table[T]) SetVersion(row *T, version int64) error {
	if t == nil || row == nil {
		return fmt.Errorf("%w: SetVersion needs a table and a row (nil table: %v, nil row: %v)", pgcc.ErrInvalidArgument, t == nil, row == nil)
	}
	vf := reflect.ValueOf(row).Elem().FieldByIndex(t.version.index)
	switch {
	case t.d.kind == VersionTimestamp:
		vf.Set(reflect.ValueOf(fromMicros(version)))
	case vf.CanUint() && (version < 0 || vf.OverflowUint(uint64(version))):
		return fmt.Errorf("%w: SetVersion on %s: version %d does not fit the version field (%v)", pgcc.ErrInvalidArgument, t.quoted, version, vf.Type())
	default:
		setInt(vf, version)
	}
	return nil
}

// versionOf reads a version field as repo compares it: the integer, or a timestamp in microseconds.
func (t *Table[T]) versionOf(vf reflect.Value) int64 {
	if t.d.kind == VersionTimestamp {
		return micros(vf.Interface().(time.Time))
	}
	return getInt(vf)
}

// versionArg is the version field as the parameter a compare-and-swap sends: the integer, or the time
// truncated to PostgreSQL's microseconds (keeping its location, which pgx uses for a timestamp without time
// zone).
func (t *Table[T]) versionArg(vf reflect.Value) any {
	if t.d.kind == VersionTimestamp {
		return vf.Interface().(time.Time).Truncate(time.Microsecond)
	}
	return getInt(vf)
}

// micros is a timestamp version as an int64: microseconds since the Unix epoch, 0 for the zero time.
func micros(ts time.Time) int64 {
	if ts.IsZero() {
		return 0
	}
	return ts.UnixMicro()
}

// fromMicros is the inverse of micros, in UTC.
func fromMicros(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMicro(n).UTC()
}

func getInt(v reflect.Value) int64 {
	if v.CanInt() {
		return v.Int()
	}
	return int64(v.Uint())
}

func setInt(v reflect.Value, n int64) {
	if v.CanInt() {
		v.SetInt(n)
		return
	}
	v.SetUint(uint64(n))
}

// values appends the values of the fields at positions of v (a T) to args. Values, not pointers: pgx
// dereferences a pointer argument through reflection, which costs an allocation per argument.
func (t *Table[T]) values(args []any, v reflect.Value, positions []int) []any {
	for _, pos := range positions {
		args = append(args, v.FieldByIndex(t.fields[pos].index).Interface())
	}
	return args
}

// keyArgs appends the key of v to args.
func (t *Table[T]) keyArgs(args []any, v reflect.Value) []any {
	return t.values(args, v, t.d.key)
}

// keyValues is the key of v as values, for errors: pointers into the caller's row would change under them.
func (t *Table[T]) keyValues(v reflect.Value) pgcc.Key {
	key := make(pgcc.Key, len(t.d.key))
	for i, pos := range t.d.key {
		key[i] = v.FieldByIndex(t.fields[pos].index).Interface()
	}
	return key
}
