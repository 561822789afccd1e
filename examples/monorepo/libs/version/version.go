// Package version carries the build version, set with
// -ldflags "-X example.com/mono/libs/version.Version=...".
package version

import "runtime"

// Version of the service; "dev" unless set at link time.
var Version = "dev"

// String is "NAME VERSION (GOVERSION)".
func String(name string) string { return name + " " + Version + " (" + runtime.Version() + ")" }
