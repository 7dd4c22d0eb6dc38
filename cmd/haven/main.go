// Command haven is the haven agent, a local dev cluster and the CLI that
// drives any agent's gRPC API.
package main

import "os"

func main() { os.Exit(realMain()) }
