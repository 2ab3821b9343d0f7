// The JavaScript and TypeScript kernel of paddock-interpreter (crates/interpreter/src/pipe.rs),
// run as `node js_kernel.js <javascript|typescript>` in the sandbox's Node.js.
//
// Requests come on stdin, one JSON object per line: {"id", "code", "silent"}; they run one
// after another. Everything the kernel says goes to stdout as lines that start with the record
// separator \x1e followed by JSON: {"id", "t": "stdout"|"stderr", "text"}, {"id", "t":
// "result"|"display", "data": {mime: value}}, {"id", "t": "error", "name", "value", "traceback"} and a
// last {"id", "t": "done"}. Other bytes on stdout or stderr (a child process writing straight
// to them) are the running execution's output.
//
// Cells run in this process's own context with vm.runInThisContext, so top-level `let`,
// `const`, functions and classes stay defined for later cells, as in a REPL; the value of the
// last expression is the result (shown with util.inspect, or as the MIME bundle an object's
// [Symbol.for("Jupyter.display")]() returns); `display(value)` shows a value on the way (a
// MIME bundle given as `{"text/html": ...}` with only MIME keys is shown as it is). A cell with
// top-level `await` runs inside an
// async function (its last expression is returned; `const|let|var name = ...` at the start of a
// line becomes a global so it outlives the cell). TypeScript is transpiled first with Debian's
// `typescript` (types are erased, not checked). SIGINT interrupts the running cell
// (breakOnSigint) and is ignored between cells.
'use strict';
const vm = require('vm');
const util = require('util');
const fs = require('fs');
const readline = require('readline');
const { Writable } = require('stream');
const { createRequire } = require('module');
const path = require('path');

const language = process.argv[2] === 'typescript' ? 'typescript' : 'javascript';
const RS = '\x1e';
let current = null;
let last = null;

function send(msg) {
  fs.writeSync(1, RS + JSON.stringify(msg) + '\n');
}

function emit(stream, text) {
  const id = current ?? last;
  if (id !== null && text.length > 0) send({ id, t: stream, text });
}

function writer(stream) {
  return new Writable({
    write(chunk, encoding, done) {
      emit(stream, typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
      done();
    },
  });
}

// What user code sees as stdout and stderr.
const stdout = writer('stdout');
const stderr = writer('stderr');
globalThis.console = new console.Console({ stdout, stderr, colorMode: false });
process.stdout.write = (chunk, encoding, cb) => {
  emit('stdout', typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
  if (typeof encoding === 'function') encoding();
  else if (typeof cb === 'function') cb();
  return true;
};
process.stderr.write = (chunk, encoding, cb) => {
  emit('stderr', typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
  if (typeof encoding === 'function') encoding();
  else if (typeof cb === 'function') cb();
  return true;
};
// Modules resolve from the working directory, as in a REPL started there.
globalThis.require = createRequire(path.join(process.cwd(), '__paddock_repl__.js'));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
process.on('SIGINT', () => {});
process.on('uncaughtException', (err) => {
  const id = current ?? last;
  if (id !== null) send({ id, t: 'stderr', text: `Uncaught ${util.inspect(err)}\n` });
});
process.on('unhandledRejection', (err) => {
  const id = current ?? last;
  if (id !== null) send({ id, t: 'stderr', text: `Unhandled rejection: ${util.inspect(err)}\n` });
});

let ts = null;
function transpile(code) {
  if (language !== 'typescript') return code;
  if (ts === null) ts = require('typescript');
  return ts.transpileModule(code, {
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      esModuleInterop: true,
    },
    reportDiagnostics: false,
  }).outputText;
}

const STATEMENT = /^(?:(?:const|let|var|if|for|while|do|switch|try|function|class|return|throw|import|export|break|continue)\b|async\s+function\b|\}|\/\/|\/\*)/;

// The cell as the body of an async function: its last expression returned, its top-level
// declarations of plain names made globals.
function asAsync(code) {
  const lines = code.split('\n');
  let i = lines.length - 1;
  while (i >= 0 && lines[i].trim() === '') i--;
  if (i >= 0) {
    const lastLine = lines[i].trim();
    if (!STATEMENT.test(lastLine) && !lastLine.endsWith('{') && !lastLine.endsWith(',')) {
      lines[i] = `return (${lastLine.replace(/;\s*$/, '')});`;
    }
  }
  const body = lines
    .map((l) => l.replace(/^(const|let|var)\s+([A-Za-z_$][\w$]*)\s*=/, 'globalThis.$2 ='))
    .join('\n');
  return `(async () => {\n${body}\n})()`;
}

function display(value) {
  const hook = value !== null && (typeof value === 'object' || typeof value === 'function')
    ? value[Symbol.for('Jupyter.display')]
    : undefined;
  if (typeof hook === 'function') {
    try {
      const bundle = hook.call(value);
      if (bundle && typeof bundle === 'object') return bundle;
    } catch (_) { /* fall back to inspect */ }
  }
  return { 'text/plain': util.inspect(value, { colors: false, depth: 4 }) };
}

// `display(value)`: shown now, not as the cell's value.
globalThis.display = (value) => {
  const id = current ?? last;
  if (id === null) return;
  const isBundle = value !== null && typeof value === 'object' && !Array.isArray(value) &&
    Object.keys(value).length > 0 && Object.keys(value).every((k) => k.includes('/'));
  send({ id, t: 'display', data: isBundle ? value : display(value) });
};

function errorMessage(err) {
  if (err instanceof Error || (err && typeof err === 'object' && 'message' in err)) {
    return {
      name: String(err.name ?? 'Error'),
      value: String(err.message ?? ''),
      traceback: String(err.stack ?? `${err.name}: ${err.message}`),
    };
  }
  return { name: 'Error', value: util.inspect(err), traceback: `Uncaught ${util.inspect(err)}` };
}

async function run(req) {
  current = req.id;
  last = req.id;
  try {
    let code = transpile(req.code);
    let script;
    let awaited = false;
    try {
      script = new vm.Script(code, { filename: 'cell' });
    } catch (err) {
      if (!(err instanceof SyntaxError) || !/\bawait\b/.test(code)) throw err;
      script = new vm.Script(asAsync(code), { filename: 'cell' });
      awaited = true;
    }
    let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
    if (awaited) value = await value;
    if (!req.silent && value !== undefined) send({ id: req.id, t: 'result', data: display(value) });
  } catch (err) {
    if (!req.silent) send({ id: req.id, t: 'error', ...errorMessage(err) });
  } finally {
    current = null;
    send({ id: req.id, t: 'done' });
  }
}

const queue = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length > 0) await run(queue.shift());
  busy = false;
}
readline.createInterface({ input: process.stdin, terminal: false }).on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch (_) {
    return;
  }
  queue.push(req);
  drain();
}).on('close', () => process.exit(0));
send({ id: null, t: 'ready' });
