// The pyexec playground: an editor, a Run button, and a console speaking the WebSocket
// JSON protocol of docs/protocol.md §13. No framework, no eval, no inline code (the page's
// Content-Security-Policy is default-src 'self').
//
// Public interface (kept for share links and end-to-end tests):
//   #code=<base64url>&run=1&stdin=<base64url>   in the URL's fragment
//   element #output  the console text: stdout and stderr in arrival order
//   element #status  the final status, "exit N (reason)", empty until the session ends
//   element #files   files sent beside the script; #get the patterns of files to get back;
//   #downloads one link per file returned (protocol §10.2, §13.4)
"use strict";
(function () {
  const CHUNK = 65536; // protocol §2: data frames of at most 64 KiB
  const EXAMPLE = 'name = input("Name: ")\nprint(f"Hello, {name}!")\n';
  const $ = (id) => document.getElementById(id);
  const out = $("output"), statusEl = $("status"), report = $("report"), queue = $("queue");
  const input = $("input"), runBtn = $("run"), intBtn = $("interrupt"), eofBtn = $("eof");
  const picker = $("files"), getField = $("get"), filesNote = $("files-note");
  const downloads = $("downloads"), filesReport = $("files-report");
  const SCRIPT_NAME = "main.py";

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

  // ---- files (protocol §10.2) ----
  // The server's name rule (pyexec_protocol::files::check_name), so that a refused name is
  // told here, before anything runs, rather than as the session's protocol error.
  function nameProblem(name) {
    if (!name) return "an empty name";
    if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return "a control character";
    if (name.startsWith("/")) return "an absolute path";
    if (utf8.encode(name).length > 1024) return "longer than 1024 bytes";
    for (const c of name.split("/")) {
      if (c === "" || c === ".") return "an empty or '.' component";
      if (c === "..") return "a '..' component";
      if (utf8.encode(c).length > 255) return "a component longer than 255 bytes";
    }
    return null;
  }
  // The picked files that can be sent, and why the others cannot.
  function pickedFiles() {
    const ok = [], refused = [];
    for (const file of picker.files) {
      const why = file.name === SCRIPT_NAME ? "the script's own name" : nameProblem(file.name);
      if (why) refused.push(file.name + " (" + why + ")"); else ok.push(file);
    }
    return { ok, refused };
  }
  function patterns() {
    const list = getField.value.split(/[\s,]+/).filter((p) => p !== "");
    const refused = [];
    for (const p of list) { const why = nameProblem(p); if (why) refused.push(p + " (" + why + ")"); }
    if (list.length > 64) refused.push("more than 64 patterns");
    return { list, refused };
  }
  function checkFiles() {
    const f = pickedFiles(), g = patterns();
    const parts = [];
    if (f.refused.length) parts.push("not sent: " + f.refused.join(", "));
    if (g.refused.length) parts.push("pattern refused: " + g.refused.join(", "));
    filesNote.textContent = parts.join("; ");
    return g.refused.length === 0;
  }
  picker.addEventListener("change", checkFiles);
  getField.addEventListener("change", checkFiles);

  // A returned file becomes a download link: a blob: URL made here (the page's own
  // navigation, which default-src 'self' does not govern), revoked at the next run so
  // the old files do not stay in memory.
  let blobUrls = [];
  function clearDownloads() {
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
    downloads.textContent = ""; filesReport.textContent = "";
  }
  function addDownload(name, parts, bytes) {
    // octet-stream: a file the script made (an .html) opened in a tab is saved, never
    // rendered as a page of this origin.
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    blobUrls.push(url);
    const a = document.createElement("a");
    a.href = url;
    // A "/" in a download's name would be changed by the browser: say how, here.
    a.download = name.replace(/\//g, "_");
    a.dataset.name = name;
    a.textContent = name;
    const li = document.createElement("li");
    li.append(a, " (" + size(bytes) + ")");
    downloads.appendChild(li);
  }

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
    constructor(script, stdin, token, files, get) {
      this.script = utf8.encode(script);
      // What goes after the script, in order (protocol §10.2: every file before stdin):
      // {type: "file_in", name, size} or {type: "file_in_data" | "stdin", bytes}.
      this.pending = [];
      this.files = files;
      this.get = get;
      this.wantsFiles = files.length > 0 || get.length > 0;
      this.scriptSent = false;
      this.incoming = null;       // the FILE_OUT being received: {name, size, parts, got}
      for (const f of files) {
        this.pending.push({ type: "file_in", name: f.name, size: f.bytes.length });
        // FILE_IN_DATA has at least one byte: an empty file is its header alone.
        if (f.bytes.length) this.pending.push({ type: "file_in_data", bytes: f.bytes });
      }
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
      const hello = { type: "hello", version: 1, script_size: this.script.length, name: SCRIPT_NAME,
                      client: "pyexec-playground", features: ["input_wanted"] };
      if (this.wantsFiles) {
        hello.features.push("files");
        hello.files = { count: this.files.length, bytes: this.files.reduce((n, f) => n + f.bytes.length, 0),
                        get: this.get };
      }
      this.send(hello);
      // With files, the script waits for welcome: a server that did not grant `files`
      // would run it without them (protocol §10.2).
      if (!this.wantsFiles) this.sendScript();
      queue.hidden = false; queue.textContent = "starting…";
    }
    sendScript() {
      for (let i = 0; i < this.script.length; i += CHUNK) {
        this.send({ type: "script", data: toB64(this.script.subarray(i, i + CHUNK)) });
      }
      this.scriptSent = true;
      this.flush();
    }
    // The input line is highlighted only while the script waits (protocol §10.3): from
    // input_wanted until a line or EOF is sent, or the session ends.
    waiting(on) { if (this === session) input.classList.toggle("waiting", on); }
    queueStdin(bytes) { if (bytes.length) this.pending.push({ type: "stdin", bytes }); this.waiting(false); this.flush(); }
    eof() { this.eofWanted = true; this.waiting(false); this.flush(); }
    flush() {
      // Nothing may overtake the script: a file or stdin before it is a protocol error.
      if (!this.scriptSent) return;
      while (this.pending.length) {
        const head = this.pending[0];
        if (head.type === "file_in") {
          this.send({ type: "file_in", name: head.name, size: head.size });
          this.pending.shift();
          continue;
        }
        // File content and stdin share the STDIN window (protocol §6, §10.2).
        if (this.window <= 0) break;
        const n = Math.min(head.bytes.length, this.window, CHUNK);
        this.send({ type: head.type, data: toB64(head.bytes.subarray(0, n)) });
        this.window -= n;
        if (n === head.bytes.length) this.pending.shift(); else head.bytes = head.bytes.subarray(n);
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
          if (this.wantsFiles && !this.scriptSent) {
            if ((m.features || []).includes("files")) { this.sendScript(); }
            else {
              // No script byte was sent, so nothing runs; END cancelled follows.
              this.filesRefused = true;
              this.send({ type: "cancel" });
            }
          }
          this.flush();
          break;
        case "file_out":
          this.incoming = { name: m.name, size: m.size, parts: [], got: 0 };
          if (m.size === 0) this.fileDone();
          break;
        case "file_out_data":
          if (!this.incoming) break;
          this.incoming.parts.push(fromB64(m.data));
          this.incoming.got += this.incoming.parts[this.incoming.parts.length - 1].length;
          if (this.incoming.got >= this.incoming.size) this.fileDone();
          break;
        case "files_out_end":
          if (this === session) {
            const parts = [];
            if (m.unmatched && m.unmatched.length) parts.push("matched nothing: " + m.unmatched.join(", "));
            for (const s of m.skipped || []) parts.push("skipped " + s.name + ": " + s.reason);
            if (m.message) parts.push(m.message);
            filesReport.textContent = parts.join(" · ");
          }
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
    fileDone() {
      const f = this.incoming;
      this.incoming = null;
      if (this === session) addDownload(f.name, f.parts, f.got);
    }
    finish(status, detail) {
      if (this.done) return;
      // A file cut short by the end is not offered: it would download incomplete.
      this.incoming = null;
      if (this.filesRefused) detail = "this server does not take files; nothing ran";
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

  let runs = 0;
  async function run(stdin) {
    if (session && !session.done) session.stop();
    const mine = ++runs;
    out.textContent = ""; statusEl.textContent = ""; note("");
    clearDownloads();
    // A refused pattern stops the run here, named, rather than as the server's error.
    if (!checkFiles()) {
      note("nothing ran: fix the get patterns"); setRunning(false); setInput(false); getField.focus(); return;
    }
    const get = patterns().list;
    let files;
    try {
      files = await Promise.all(pickedFiles().ok.map(async (f) => ({ name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) })));
    } catch (e) { note("a file could not be read: " + e); setRunning(false); setInput(false); return; }
    // Run again while the files were read: only the last run starts.
    if (mine !== runs) return;
    decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    session = new Session(editor.getValue(), stdin === undefined ? null : stdin, token(), files, get);
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
