package migrations

import (
	"io/fs"
	"strconv"
	"strings"
)

// LatestVersion returns the highest version among the embedded migration files.
func LatestVersion() (uint, error) {
	entries, err := fs.ReadDir(FS(), ".")
	if err != nil {
		return 0, err
	}
	var top uint
	for _, e := range entries {
		n, err := strconv.ParseUint(strings.SplitN(e.Name(), "_", 2)[0], 10, 64)
		if err != nil {
			return 0, err
		}
		top = max(top, uint(n))
	}
	return top, nil
}
