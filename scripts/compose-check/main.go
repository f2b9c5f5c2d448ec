// compose-check loads compose files with compose-go, the Compose Specification's own
// parser (the one Docker Compose v2 uses), and prints the normalized project as JSON.
// It fails, naming the problem, when a file does not follow today's specification.
//
//	go run ./scripts/compose-check compose.yaml
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE...")
		os.Exit(2)
	}
	// The caller's environment, as Docker Compose reads it (with .env's variables).
	opts, err := cli.NewProjectOptions(os.Args[1:], cli.WithName("order-pipeline"), cli.WithOsEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
