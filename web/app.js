// The pyexec playground: an editor, a Run button, and a console speaking the WebSocket
// JSON protocol of docs/protocol.md §13. No framework, no eval, no inline code (the page's
// Content-Security-Policy is default-src 'self').
//
// Public interface (kept for share links and end-to-end tests):
//   #code=<base64url>&run=1&stdin=<base64url>   in the URL's fragment
//   element #output  the console text: stdout and stderr in arrival order
//   element #status  the final status, "exit N (reason)", empty until the session ends
"use strict";
(function () {
  const CHUNK = 65536; // protocol §2: data frames of at most 64 KiB
  const EXAMPLE = 'name = input("Name: ")\nprint(f"Hello, {name}!")\n';
  const $ = (id) => document.getElementById(id);
  const out = $("output"), statusEl = $("status"), report = $("report"), queue = $("queue");
  const input = $("input"), runBtn = $("run"), intBtn = $("interrupt"), eofBtn = $("eof");

  const editor = CodeMirror.fromTextArea($("code"), {
    mode: "python", lineNumbers: true, indentUnit: 4, viewportMargin: Infinity,
    extraKeys: {
      "Ctrl-Enter": () => run(), "Cmd-Enter": () => run(),
      // Tab moves focus on from the editor when Shift is held: keyboard users can leave it.
      "Shift-Tab": false,
    },
  });

  // ---- bytes and base64 ----
  const utf8 = new TextEncoder();
  function toB64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }
  function fromB64(text) {
    const s = atob(text);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return bytes;
  }
  const toB64url = (bytes) => toB64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  function fromB64url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    return fromB64(b64 + "===".slice((b64.length + 3) % 4));
  }

  // ---- the fragment: #code=…&run=1&stdin=…&token=… ----
  function fragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const text = (name) => {
      const v = params.get(name);
      if (v === null) return null;
      try { return new TextDecoder("utf-8", { fatal: false }).decode(fromB64url(v)); }
      catch (e) { return null; }
    };
    return { code: text("code"), stdin: text("stdin"), run: params.get("run") === "1", token: params.get("token") };
  }

  // ---- the console ----
  let decoders = null;
  function append(kind, text) {
    if (!text) return;
    const last = out.lastElementChild;
    if (last && last.className === kind) { last.textContent += text; }
    else { const span = document.createElement("span"); span.className = kind; span.textContent = text; out.appendChild(span); }
    out.scrollTop = out.scrollHeight;
  }
  // What the user typed is shown, but is not part of #output's text (CSS draws it).
  function echo(line) {
    const span = document.createElement("span");
    span.className = "echo";
    span.dataset.text = line;
    out.appendChild(span);
  }
  function note(text) { report.textContent = text; }

  // ---- one session ----
  let session = null;

  function setRunning(on) {
    intBtn.disabled = !on;
    runBtn.textContent = on ? "Restart" : "Run";
  }
  function setInput(open) {
    input.disabled = !open;
    eofBtn.disabled = !open;
  }

  function size(n) {
    if (n === undefined || n === null) return "?";
    if (n < 1024) return n + " bytes";
    const units = ["KiB", "MiB", "GiB"];
    let v = n, u = -1;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return v.toFixed(1) + " " + units[u];
  }
  const ms = (n) => (n === undefined || n === null ? "?" : (n / 1000).toFixed(2) + " s");

  class Session {
    constructor(script, stdin, token) {
      this.script = utf8.encode(script);
      this.pending = [];          // stdin bytes waiting for window
      this.eofWanted = false;
      this.eofSent = false;
      this.window = 0;            // protocol §6: none before welcome
      this.windowSize = 0;
      this.done = false;
      const protocols = ["pyexec.v1"];
      if (token) protocols.push("pyexec.token." + token);
      this.ws = new WebSocket("wss://" + location.host + "/ws", protocols);
      this.ws.onopen = () => this.start();
      this.ws.onmessage = (ev) => this.receive(JSON.parse(ev.data));
      this.ws.onclose = () => this.closed();
      this.ws.onerror = () => {};
      if (stdin !== null && stdin !== undefined) { this.queueStdin(utf8.encode(stdin)); this.eof(); }
    }
    send(message) { if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message)); }
    start() {
      this.send({ type: "hello", version: 1, script_size: this.script.length, name: "main.py",
                  client: "pyexec-playground", features: ["input_wanted"] });
      for (let i = 0; i < this.script.length; i += CHUNK) {
        this.send({ type: "script", data: toB64(this.script.subarray(i, i + CHUNK)) });
      }
      queue.hidden = false; queue.textContent = "starting…";
    }
    // The input line is highlighted only while the script waits (protocol §10.3): from
    // input_wanted until a line or EOF is sent, or the session ends.
    waiting(on) { if (this === session) input.classList.toggle("waiting", on); }
    queueStdin(bytes) { if (bytes.length) this.pending.push(bytes); this.waiting(false); this.flush(); }
    eof() { this.eofWanted = true; this.waiting(false); this.flush(); }
    flush() {
      while (this.window > 0 && this.pending.length) {
        const head = this.pending[0];
        const n = Math.min(head.length, this.window, CHUNK);
        this.send({ type: "stdin", data: toB64(head.subarray(0, n)) });
        this.window -= n;
        if (n === head.length) this.pending.shift(); else this.pending[0] = head.subarray(n);
      }
      if (this.eofWanted && !this.eofSent && !this.pending.length && this.windowSize) {
        this.send({ type: "stdin_eof" });
        this.eofSent = true;
        setInput(false);
      }
    }
    receive(m) {
      switch (m.type) {
        case "welcome":
          this.window = this.windowSize = m.limits.stdin_window;
          this.flush();
          break;
        case "queued":
          queue.hidden = false;
          queue.textContent = "queued: position " + m.position;
          break;
        case "started":
          queue.hidden = true;
          if (!this.eofSent && this === session) { setInput(true); input.focus(); }
          break;
        case "stdout": case "stderr":
          append(m.type, decoders[m.type].decode(fromB64(m.data), { stream: true }));
          break;
        case "input_wanted":
          if (!this.eofSent) this.waiting(true);
          break;
        case "stdin_credit":
          this.window = Math.min(this.windowSize, this.window + m.bytes);
          this.flush();
          break;
        case "end":
          this.finish("exit " + m.exit_code + " (" + m.reason + ")",
            ["ran " + ms(m.duration_ms), "cpu " + ms(m.cpu_ms), "peak memory " + size(m.peak_memory_bytes),
             "output " + size(m.output_bytes)].join(" · ") + (m.message ? " · " + m.message : ""));
          break;
        case "error":
          this.finish("exit 125 (error: " + m.code + ")", m.message || "");
          break;
        default: // a message of a feature not asked for cannot come; others are ignored
      }
    }
    finish(status, detail) {
      if (this.done) return;
      this.waiting(false);
      this.done = true;
      if (this !== session) return;
      for (const k of ["stdout", "stderr"]) append(k, decoders[k].decode());
      queue.hidden = true;
      statusEl.textContent = status;
      note(detail);
      setRunning(false); setInput(false);
    }
    closed() {
      if (!this.done) this.finish("exit 125 (connection lost)",
        "the connection closed before the session ended (the server may need a token: add #token=… to the address)");
    }
    stop() { this.send({ type: "cancel" }); this.done = true; this.ws.close(); }
  }

  function token() {
    const t = fragment().token;
    if (t) { try { localStorage.setItem("pyexec.token", t); } catch (e) { /* private mode */ } return t; }
    try { return localStorage.getItem("pyexec.token"); } catch (e) { return null; }
  }

  function run(stdin) {
    if (session && !session.done) session.stop();
    out.textContent = ""; statusEl.textContent = ""; note("");
    decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    session = new Session(editor.getValue(), stdin === undefined ? null : stdin, token());
    setRunning(true);
    setInput(false); // until the script has started
  }

  // ---- controls ----
  runBtn.addEventListener("click", () => run());
  intBtn.addEventListener("click", () => { if (session && !session.done) session.send({ type: "signal", signal: 2 }); });
  eofBtn.addEventListener("click", () => { if (session && !session.done) session.eof(); });
  $("input-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!session || session.done || input.disabled) return;
    echo(input.value + "\n");
    session.queueStdin(utf8.encode(input.value + "\n"));
    input.value = "";
  });
  input.addEventListener("keydown", (ev) => {
    if (!ev.ctrlKey || !session || session.done) return;
    const k = ev.key.toLowerCase();
    if (k === "d") { ev.preventDefault(); session.eof(); }
    else if (k === "c" && input.selectionStart === input.selectionEnd) { ev.preventDefault(); session.send({ type: "signal", signal: 2 }); }
  });
  $("share").addEventListener("click", () => {
    const url = location.origin + location.pathname + "#code=" + toB64url(utf8.encode(editor.getValue()));
    history.replaceState(null, "", url);
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(url).then(() => note("link copied"), () => note("link in the address bar"));
    } else { note("link in the address bar"); }
  });

  function load() {
    const f = fragment();
    if (f.code !== null) editor.setValue(f.code);
    if (f.run) run(f.stdin);
  }
  window.addEventListener("hashchange", load);
  editor.setValue(EXAMPLE);
  load();
  if (!fragment().run) editor.focus();
})();
