package bench

import (
	"context"
	"os/exec"
)

// execOutput runs a command and returns its standard output.
func execOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}
