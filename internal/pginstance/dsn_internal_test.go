package pginstance

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestDSNQuoting: database names that need quoting survive both connection string forms.
func TestDSNQuoting(t *testing.T) {
	t.Parallel()
	for _, db := range []string{"app", "my db", `it's`, `back\slash`} {
		cfg, err := pgconn.ParseConfig(MultiHostDSN(&Instance{port: 1}, &Instance{port: 2}, db))
		if err != nil || cfg.Database != db || len(cfg.Fallbacks) != 1 {
			t.Errorf("%q: %v %q", db, err, cfg.Database)
		}
		cfg, err = pgconn.ParseConfig((&Instance{port: 1}).DSN(db))
		if err != nil || cfg.Database != db {
			t.Errorf("url %q: %v %q", db, err, cfg.Database)
		}
	}
}
