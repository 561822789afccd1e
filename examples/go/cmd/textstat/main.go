// textstat prints line/word counts and the most frequent words of its input.
//
//	textstat [-top N] [-json] [FILE...]   (stdin when no FILE)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"example.com/textstat/internal/stats"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	top := flag.Int("top", 5, "how many of the most frequent words to print")
	asJSON := flag.Bool("json", false, "print JSON")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("textstat", version)
		return
	}

	var readers []io.Reader
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, "textstat:", err)
			os.Exit(1)
		}
		defer f.Close()
		readers = append(readers, f)
	}
	if len(readers) == 0 {
		readers = append(readers, os.Stdin)
	}
	s, err := stats.Analyze(io.MultiReader(readers...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "textstat:", err)
		os.Exit(1)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"lines": s.Lines, "words": s.Words, "chars": s.Chars, "top": s.Top(*top)})
		return
	}
	fmt.Printf("lines %d\nwords %d\nchars %d\n", s.Lines, s.Words, s.Chars)
	for _, wc := range s.Top(*top) {
		fmt.Printf("%6d %s\n", wc.Count, wc.Word)
	}
}
