package migrations

import "github.com/pgcc/pgcc/internal/schema"

// LatestVersion returns the highest version among the embedded migration files.
func LatestVersion() (uint, error) { return schema.Latest() }
