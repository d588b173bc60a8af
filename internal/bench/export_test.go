package bench

// PgbenchCommand exposes pgbenchCommand to the external tests.
var PgbenchCommand = pgbenchCommand
