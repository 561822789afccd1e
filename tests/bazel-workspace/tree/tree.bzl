"""Rules that produce and consume a tree artifact (an output directory)."""

def _tree_output_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    args = ctx.actions.args()
    args.add(out.path)
    for relpath in sorted(ctx.attr.files.keys()):
        args.add(relpath)
        args.add(ctx.attr.files[relpath])
    ctx.actions.run_shell(
        outputs = [out],
        arguments = [args],
        command = """
set -eu
out="$1"
shift
mkdir -p "$out"
while [ "$#" -gt 0 ]; do
  mkdir -p "$out/$(dirname "$1")"
  printf '%s\\n' "$2" > "$out/$1"
  shift 2
done
""",
        mnemonic = "TreeOutput",
        progress_message = "Writing directory %s" % out.short_path,
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

tree_output = rule(
    implementation = _tree_output_impl,
    doc = "Writes a directory whose files (relative path -> content) are given by `files`.",
    attrs = {
        "files": attr.string_dict(mandatory = True),
    },
)

def _tree_manifest_impl(ctx):
    tree = ctx.file.tree
    if not tree.is_directory:
        fail("tree must be a directory (tree artifact)")
    out = ctx.actions.declare_file(ctx.label.name + ".txt")
    ctx.actions.run_shell(
        inputs = [tree],
        outputs = [out],
        arguments = [tree.path, out.path],
        command = """
set -eu
# A sandbox may stage the directory's files as symlinks (linux-sandbox does),
# remote execution as plain files: follow links (-L) so both agree.
tree="$1"
out="$2"
{
  echo "# directories"
  (cd "$tree" && find -L . -type d | LC_ALL=C sort)
  echo "# files (sha256, relative path)"
  (cd "$tree" && find -L . -type f | LC_ALL=C sort | while read -r f; do sha256sum "$f"; done)
} > "$out"
""",
        mnemonic = "TreeManifest",
        progress_message = "Listing directory %s" % tree.short_path,
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

tree_manifest = rule(
    implementation = _tree_manifest_impl,
    doc = "Lists a directory produced by tree_output and checksums every file in it.",
    attrs = {
        "tree": attr.label(allow_single_file = True, mandatory = True),
    },
)
