//! The Python scripts measured, the same bytes for pyexec and for `docker run`.

pub const HELLO: &str = "print(\"hello\")\n";

/// Announces itself, then echoes every line at once.
pub const ECHO: &str = "\
import sys
sys.stdout.write(\"ready\\n\")
sys.stdout.flush()
for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
";

/// Announces itself, then holds its session open until stdin ends.
pub const BLOCK: &str = "\
import sys
print(\"ready\", flush=True)
sys.stdin.read()
";

/// Writes `mib` MiB to stdout in 1 MiB blocks.
pub fn flood(mib: u64) -> String {
    format!(
        "import sys\n\
         block = b\"x\" * (1 << 20)\n\
         out = sys.stdout.buffer\n\
         for _ in range({mib}):\n    out.write(block)\n\
         out.flush()\n"
    )
}
