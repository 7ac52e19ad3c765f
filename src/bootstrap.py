# pyexec bootstrap: runs as the sandbox container's main process (under docker-init).
# It reads exactly one request from stdin, never a byte more, so that everything after it
# on stdin belongs to the script:
#   b"PYX1" | u32 script_len | u32 name_len | u32 args_len | script | name | args (NUL-separated)
# then writes the script to /tmp/<name> and execs `python3 -u /tmp/<name> args...`, which
# gives the script exactly the semantics of `python3 script.py`.
import os, sys

def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(0)  # the server went away before handing over a script
        buf += chunk
    return bytes(buf)

head = read_exact(16)
if head[:4] != b"PYX1":
    os.write(2, b"pyexec bootstrap: bad request header\n")
    os._exit(125)
script = read_exact(int.from_bytes(head[4:8], "big"))
name = read_exact(int.from_bytes(head[8:12], "big")).decode()
n = int.from_bytes(head[12:16], "big")
args = read_exact(n).split(b"\0") if n else []
os.chdir("/tmp")
path = "/tmp/" + name
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
view = memoryview(script)
while view:
    view = view[os.write(fd, view):]
os.close(fd)
# A relative path gives sys.argv[0] == name, as `python3 name` would.
os.execv(sys.executable, [sys.executable, "-u", name] + args)
