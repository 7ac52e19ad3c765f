#!/usr/bin/env python3
"""Drives Debian's headless Chromium (selenium + chromium-driver) through the playground
of a running pyexecd; run by tests/web.rs, which starts the daemon and owns the process
group this script and every browser process run in.

Usage: playground.py URL SPKI_SHA256_BASE64 PROFILE_DIR [SCREENSHOT.png]

Each check prints one line `ok NAME` or fails with an AssertionError naming it. The last
line is `N passed, 0 failed`. Waits poll the page for the event (WebDriverWait); no
fixed sleeps."""

import base64
import json
import os
import sys
import tempfile
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL, SPKI, PROFILE = sys.argv[1], sys.argv[2], sys.argv[3]
SHOT = sys.argv[4] if len(sys.argv) > 4 else None
ORIGIN = URL.rstrip("/")
WAIT = 30


def b64url(text):
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--window-size=1100,720",
        f"--user-data-dir={PROFILE}",
        # Trusts exactly the daemon's key, not every certificate.
        f"--ignore-certificate-errors-spki-list={SPKI}",
        # Nothing of the browser's own may go out either.
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--disable-extensions",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def text(d, id_):
    return d.find_element(By.ID, id_).get_attribute("textContent")


def wait(d, what, cond):
    try:
        return WebDriverWait(d, WAIT, poll_frequency=0.05).until(lambda _: cond())
    except Exception:
        raise AssertionError(
            f"timed out waiting for {what}: output={text(d, 'output')!r} "
            f"status={text(d, 'status')!r} report={text(d, 'report')!r}"
        )


def set_code(d, code):
    # Through CodeMirror's own API on its element, as the editor's content.
    d.execute_script(
        "document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])", code
    )


def requests_left_the_origin(d):
    """Every network request the page made, from the DevTools log, not to our origin."""
    bad = []
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            params = msg["params"]
            url = params.get("request", {}).get("url") or params.get("url", "")
            parsed = urllib.parse.urlsplit(url)
            ours = f"{parsed.scheme}://{parsed.netloc}" in (
                ORIGIN,
                ORIGIN.replace("https://", "wss://"),
            )
            # chrome:// and data: are the browser's own pages (its new tab), not network.
            if not ours and parsed.scheme in ("http", "https", "ws", "wss", "ftp"):
                bad.append(url)
    return bad


def console_errors(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def main():
    d = browser()
    passed = 0

    def ok(name):
        nonlocal passed
        passed += 1
        print("ok", name, flush=True)

    try:
        # 1. The page loads: the editor is there, no console error, nothing from elsewhere.
        d.get(URL)
        wait(d, "the editor", lambda: d.find_elements(By.CSS_SELECTOR, ".CodeMirror"))
        assert text(d, "status") == "", "status is empty before a run"
        errors = console_errors(d)
        assert not errors, f"console errors on load: {errors}"
        ok("page loads without console errors")

        # 2. input(): the prompt shows before anything is typed; a typed line answers.
        set_code(
            d,
            'import sys\nname = input("Name: ")\nprint(f"Hello, {name}!")\n'
            'print("bye from stderr", file=sys.stderr)\nsys.exit(3)\n',
        )
        d.find_element(By.ID, "run").click()
        wait(d, "the prompt", lambda: text(d, "output") == "Name: ")
        assert text(d, "status") == "", "no status while the script waits"
        field = d.find_element(By.ID, "input")
        wait(d, "the input line to open", field.is_enabled)
        assert d.switch_to.active_element == field, "the input line has the focus"
        ok("the prompt shows before anything is typed")
        waiting = lambda: "waiting" in (field.get_attribute("class") or "").split()
        wait(d, "the input highlight (input_wanted)", waiting)
        field.send_keys("Ada", Keys.ENTER)
        assert not waiting(), "the highlight goes as the line is sent"
        wait(d, "the exit status", lambda: text(d, "status").startswith("exit 3"))
        assert text(d, "status") == "exit 3 (exited)", text(d, "status")
        # Docker keeps each stream's order, not the order between the two, and print()
        # writes its text and its newline apart: a stderr line may land anywhere, even
        # between "Hello, Ada!" and its newline. So each stream is checked on its own.
        out = text(d, "output")
        def stream(kind):
            spans = d.find_elements(By.CSS_SELECTOR, f"#output .{kind}")
            return "".join(e.get_attribute("textContent") for e in spans)
        assert stream("stdout") == "Name: Hello, Ada!\n", repr(out)
        assert stream("stderr") == "bye from stderr\n", repr(out)
        assert len(out) == len("Name: Hello, Ada!\nbye from stderr\n"), repr(out)
        assert "cpu" in text(d, "report") and "peak memory" in text(d, "report")
        assert not waiting(), "no highlight after the end"
        ok("a typed line is answered and the exit status shows")
        if SHOT:
            d.save_screenshot(SHOT)

        # 3. Ctrl-C interrupts a sleeping script.
        set_code(d, 'import time\nprint("sleeping", flush=True)\ntime.sleep(50)\n')
        d.find_element(By.ID, "run").click()
        wait(d, "the script to sleep", lambda: text(d, "output") == "sleeping\n")
        assert not waiting(), "no highlight while the script sleeps"
        ok("the input highlight shows only while the script waits")
        d.find_element(By.ID, "interrupt").click()
        wait(d, "the interrupt", lambda: text(d, "status").startswith("exit "))
        assert text(d, "status") == "exit 130 (signal)", text(d, "status")
        assert "KeyboardInterrupt" in text(d, "output"), text(d, "output")
        ok("Ctrl-C interrupts a sleeping script")

        # 4. The Share button puts the script's link in the address bar.
        shared = 'print("shared")\n'
        set_code(d, shared)
        d.find_element(By.ID, "share").click()
        wait(d, "the link", lambda: "#code=" in d.current_url)
        assert d.current_url == f"{ORIGIN}/#code={b64url(shared)}", d.current_url
        ok("Share puts the link in the address bar")

        # 5. A share link with run=1 and stdin runs by itself, in a fresh page.
        code = 'import sys\ndata = sys.stdin.read()\nprint(data.upper(), end="")\nsys.exit(len(data))\n'
        d.get("about:blank")
        d.get(f"{ORIGIN}/#code={b64url(code)}&run=1&stdin={b64url('hi there')}")
        wait(d, "the shared run", lambda: text(d, "status").startswith("exit "))
        assert text(d, "status") == "exit 8 (exited)", text(d, "status")
        assert text(d, "output") == "HI THERE", repr(text(d, "output"))
        ok("a share link with run=1 runs by itself")

        # 6. Files (protocol §10.2, §13.4): a CSV picked beside the script, a result file
        # back as a download. The picker gets three files; main.py, the script's own name,
        # is refused by name before anything runs. big.dat, larger than the STDIN window,
        # goes in on credit and comes back in several chunks, every byte value in it.
        with tempfile.TemporaryDirectory() as tmp:
            csv = os.path.join(tmp, "data.csv")
            with open(csv, "w") as f:
                f.write("name,n\nx,2\ny,40\n")
            big = os.path.join(tmp, "big.dat")
            blob = bytes((i * 7 + i // 256) % 256 for i in range(700_000))
            with open(big, "wb") as f:
                f.write(blob)
            clash = os.path.join(tmp, "main.py")
            with open(clash, "w") as f:
                f.write("print('the wrong main.py')\n")
            d.get(URL)
            wait(d, "the editor", lambda: d.find_elements(By.CSS_SELECTOR, ".CodeMirror"))
            set_code(
                d,
                "import csv\nrows = list(csv.DictReader(open('data.csv')))\n"
                "total = sum(int(r['n']) for r in rows)\n"
                "open('out.txt', 'w').write(f'total={total}\\n')\nprint('rows', len(rows))\n"
                "import shutil\nshutil.copy('big.dat', 'copy.dat')\n",
            )
            # Selenium gives a multiple file input several paths separated by newlines.
            d.find_element(By.ID, "files").send_keys("\n".join([csv, big, clash]))
            wait(d, "the refusal", lambda: "main.py" in text(d, "files-note"))
            assert "the script's own name" in text(d, "files-note"), text(d, "files-note")
            assert "data.csv" not in text(d, "files-note") and "big" not in text(d, "files-note")
            ok("a refused file name is told before the run")

            # A refused get pattern stops the run before it starts, named.
            get = d.find_element(By.ID, "get")
            get.send_keys("../x")
            d.find_element(By.ID, "run").click()
            wait(d, "the pattern's refusal", lambda: "../x" in text(d, "files-note"))
            assert text(d, "status") == "", "nothing ran"
            assert "nothing ran" in text(d, "report"), text(d, "report")
            ok("a refused get pattern stops the run")

            get.clear()
            get.send_keys("out.txt, nothing* copy.dat")
            d.find_element(By.ID, "run").click()
            wait(d, "the files run", lambda: text(d, "status").startswith("exit "))
            assert text(d, "status") == "exit 0 (exited)", (text(d, "status"), text(d, "output"))
            assert text(d, "output") == "rows 2\n", repr(text(d, "output"))
            links = {l.get_attribute("download"): l for l in d.find_elements(By.CSS_SELECTOR, "#downloads a")}
            assert sorted(links) == ["copy.dat", "out.txt"], list(links)
            link = links["out.txt"]
            assert link.get_attribute("download") == "out.txt", link.get_attribute("outerHTML")
            assert link.text == "out.txt", link.text
            href = link.get_attribute("href")
            assert href.startswith("blob:" + ORIGIN + "/"), href
            assert "matched nothing: nothing*" in text(d, "files-report"), text(d, "files-report")
            # The link works under the page's CSP: clicked, the browser saves the file,
            # content and name, into the download directory.
            saved = os.path.join(tmp, "downloads")
            os.mkdir(saved)
            d.execute_cdp_cmd(
                "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": saved}
            )
            link.send_keys(Keys.ENTER)  # by keyboard, as a user without a mouse would
            target = os.path.join(saved, "out.txt")
            wait(d, "the download", lambda: os.path.exists(target))
            with open(target) as f:
                assert f.read() == "total=42\n", "the download's content"
            links["copy.dat"].send_keys(Keys.ENTER)
            target = os.path.join(saved, "copy.dat")
            wait(d, "the large download", lambda: os.path.exists(target))
            with open(target, "rb") as f:
                assert f.read() == blob, "the large file's bytes, in and out"
            ok("a picked file goes in and its result comes back as a download")

            # On a phone's width the file controls and the link stay on the page, whole,
            # with no sideways scrolling.
            d.set_window_size(390, 844)
            wide = d.execute_script(
                "const w = document.documentElement.clientWidth;"
                "const out = ['files', 'get', 'downloads', 'run', 'output', 'status']"
                ".filter(id => { const r = document.getElementById(id).getBoundingClientRect();"
                " return r.left < 0 || r.right > w || r.width === 0; });"
                "if (document.documentElement.scrollWidth > w) out.push('the page');"
                "return out;"
            )
            assert not wide, f"wider than a phone: {wide}"
            d.set_window_size(1100, 720)
            ok("the file controls fit a phone's width")

        # 7. After all of it: still no console error, and no request left the server.
        errors = console_errors(d)
        assert not errors, f"console errors: {errors}"
        left = requests_left_the_origin(d)
        assert not left, f"requests to elsewhere: {left}"
        ok("no console error and no request leaving the server")
    finally:
        d.quit()
    print(f"{passed} passed, 0 failed", flush=True)


if __name__ == "__main__":
    main()
