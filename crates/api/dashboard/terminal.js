// A small terminal for the browser: a grid of cells fed with the PTY's bytes (UTF-8), the
// usual control characters (CR, LF, BS, TAB, BEL), CSI cursor moves and erases, SGR colours
// (16 colours, bold, inverse), the alternate screen, and OSC titles dropped. Keys and pastes
// become the bytes a terminal sends and go to `onInput`. Lines scrolled off the top are kept
// (up to 1000) above the screen.

const MAX_HISTORY = 1000

export class Terminal {
  constructor(el, { cols = 100, rows = 26, onInput = () => {} } = {}) {
    this.el = el
    this.cols = cols
    this.rows = rows
    this.onInput = onInput
    this.decoder = new TextDecoder()
    this.history = document.createElement('div')
    this.screen = document.createElement('div')
    el.classList.add('term')
    el.tabIndex = 0
    el.replaceChildren(this.history, this.screen)
    this.rowEls = []
    for (let i = 0; i < rows; i++) {
      const r = document.createElement('div')
      r.className = 'row'
      this.rowEls.push(r)
      this.screen.append(r)
    }
    this.reset()
    el.addEventListener('keydown', (e) => this.key(e))
    el.addEventListener('paste', (e) => {
      e.preventDefault()
      this.onInput(e.clipboardData.getData('text').replace(/\r?\n/g, '\r'))
    })
  }

  reset() {
    this.grid = this.blankScreen()
    this.x = 0
    this.y = 0
    this.wrapNext = false
    this.fg = null
    this.bg = null
    this.bold = false
    this.inverse = false
    this.saved = { x: 0, y: 0 }
    this.state = 'normal'
    this.params = ''
    this.cursorVisible = true
    this.alt = null
    this.dirty = true
    this.schedule()
  }

  blankRow() {
    return Array.from({ length: this.cols }, () => ({ c: ' ', s: '' }))
  }

  blankScreen() {
    return Array.from({ length: this.rows }, () => this.blankRow())
  }

  style() {
    const s = []
    if (this.fg !== null) s.push(`f${this.fg}`)
    if (this.bg !== null) s.push(`g${this.bg}`)
    if (this.bold) s.push('b')
    if (this.inverse) s.push('inv')
    return s.join(' ')
  }

  /** Everything shown, history included, as text (one line per row). */
  text() {
    const hist = [...this.history.children].map((r) => r.textContent)
    return [...hist, ...this.grid.map((r) => r.map((c) => c.c).join('').trimEnd())].join('\n')
  }

  /** Feeds the PTY's output. */
  write(bytes) {
    const text = typeof bytes === 'string' ? bytes : this.decoder.decode(bytes, { stream: true })
    for (const ch of text) this.feed(ch)
    this.dirty = true
    this.schedule()
  }

  feed(ch) {
    const code = ch.codePointAt(0)
    switch (this.state) {
      case 'esc':
        return this.escape(ch)
      case 'csi':
        if (code >= 0x40 && code <= 0x7e) {
          this.state = 'normal'
          return this.csi(this.params, ch)
        }
        // A sequence that never ends is dropped rather than grown without bound.
        if (this.params.length >= 64) this.state = 'normal'
        else this.params += ch
        return
      case 'osc':
        if (ch === '\x07') this.state = 'normal'
        else if (ch === '\x1b') this.state = 'oscEsc'
        return
      case 'oscEsc':
        this.state = ch === '\\' ? 'normal' : 'osc'
        return
      case 'charset':
        this.state = 'normal'
        return
    }
    if (code < 0x20 || code === 0x7f) return this.control(ch)
    this.print(ch)
  }

  control(ch) {
    switch (ch) {
      case '\x1b':
        this.state = 'esc'
        break
      case '\r':
        this.x = 0
        this.wrapNext = false
        break
      case '\n':
      case '\x0b':
      case '\x0c':
        this.lineFeed()
        break
      case '\b':
        if (this.wrapNext) this.wrapNext = false
        else if (this.x > 0) this.x--
        break
      case '\t':
        this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8)
        break
      default: // BEL and the rest: nothing to show
    }
  }

  escape(ch) {
    this.state = 'normal'
    switch (ch) {
      case '[':
        this.state = 'csi'
        this.params = ''
        break
      case ']':
        this.state = 'osc'
        break
      case '(':
      case ')':
      case '*':
      case '+':
        this.state = 'charset'
        break
      case '7':
        this.saveCursor()
        break
      case '8':
        this.restoreCursor()
        break
      case 'M':
        if (this.y === 0) this.scrollDown(1)
        else this.y--
        break
      case 'D':
        this.lineFeed()
        break
      case 'E':
        this.x = 0
        this.lineFeed()
        break
      case 'c':
        this.reset()
        break
      default: // keypad modes and the like
    }
  }

  print(ch) {
    if (this.wrapNext) {
      this.x = 0
      this.lineFeed()
      this.wrapNext = false
    }
    this.grid[this.y][this.x] = { c: ch, s: this.style() }
    if (this.x === this.cols - 1) this.wrapNext = true
    else this.x++
  }

  lineFeed() {
    if (this.y === this.rows - 1) this.scrollUp(1)
    else this.y++
  }

  saveCursor() {
    this.saved = { x: this.x, y: this.y }
  }

  restoreCursor() {
    this.x = this.saved.x
    this.y = this.saved.y
  }

  scrollUp(n) {
    for (let i = 0; i < n; i++) {
      const gone = this.grid.shift()
      if (!this.alt) this.keep(gone)
      this.grid.push(this.blankRow())
    }
  }

  scrollDown(n) {
    for (let i = 0; i < n; i++) {
      this.grid.pop()
      this.grid.unshift(this.blankRow())
    }
  }

  keep(row) {
    const el = document.createElement('div')
    el.className = 'row'
    this.paint(el, row, -1)
    this.history.append(el)
    while (this.history.childElementCount > MAX_HISTORY) this.history.firstChild.remove()
  }

  erase(row, from, to) {
    for (let i = Math.max(0, from); i < Math.min(this.cols, to); i++) this.grid[row][i] = { c: ' ', s: '' }
  }

  csi(raw, final) {
    const priv = /^[?>=!]/.test(raw) ? raw[0] : ''
    const nums = raw.slice(priv.length).split(';').map((p) => (p === '' ? null : Number.parseInt(p, 10)))
    const n = (i = 0, dflt = 1) => (nums[i] === null || nums[i] === undefined || Number.isNaN(nums[i]) ? dflt : nums[i])
    const clampY = (v) => Math.max(0, Math.min(this.rows - 1, v))
    const clampX = (v) => Math.max(0, Math.min(this.cols - 1, v))
    this.wrapNext = false
    if (priv === '?') {
      if (final === 'h' || final === 'l') {
        const on = final === 'h'
        for (const p of nums) {
          if (p === 25) this.cursorVisible = on
          if (p === 1049 || p === 47 || p === 1047) this.alternate(on)
        }
      }
      return
    }
    if (priv) return
    switch (final) {
      case 'A':
        this.y = clampY(this.y - Math.max(1, n()))
        break
      case 'B':
        this.y = clampY(this.y + Math.max(1, n()))
        break
      case 'C':
        this.x = clampX(this.x + Math.max(1, n()))
        break
      case 'D':
        this.x = clampX(this.x - Math.max(1, n()))
        break
      case 'E':
        this.x = 0
        this.y = clampY(this.y + Math.max(1, n()))
        break
      case 'F':
        this.x = 0
        this.y = clampY(this.y - Math.max(1, n()))
        break
      case 'G':
      case '`':
        this.x = clampX(n() - 1)
        break
      case 'd':
        this.y = clampY(n() - 1)
        break
      case 'H':
      case 'f':
        this.y = clampY(n(0) - 1)
        this.x = clampX(n(1) - 1)
        break
      case 'J': {
        const mode = n(0, 0)
        if (mode === 0) {
          this.erase(this.y, this.x, this.cols)
          for (let r = this.y + 1; r < this.rows; r++) this.erase(r, 0, this.cols)
        } else if (mode === 1) {
          this.erase(this.y, 0, this.x + 1)
          for (let r = 0; r < this.y; r++) this.erase(r, 0, this.cols)
        } else {
          this.grid = this.blankScreen()
          if (mode === 3) this.history.replaceChildren()
        }
        break
      }
      case 'K': {
        const mode = n(0, 0)
        if (mode === 0) this.erase(this.y, this.x, this.cols)
        else if (mode === 1) this.erase(this.y, 0, this.x + 1)
        else this.erase(this.y, 0, this.cols)
        break
      }
      case 'P': {
        const row = this.grid[this.y]
        row.splice(this.x, Math.min(n(), this.cols - this.x))
        while (row.length < this.cols) row.push({ c: ' ', s: '' })
        break
      }
      case '@': {
        const row = this.grid[this.y]
        row.splice(this.x, 0, ...Array.from({ length: Math.min(n(), this.cols - this.x) }, () => ({ c: ' ', s: '' })))
        row.length = this.cols
        break
      }
      case 'X':
        this.erase(this.y, this.x, this.x + Math.min(n(), this.cols))
        break
      case 'L':
        // Counts come from the sandbox's output: at most a screenful of work.
        for (let i = 0, k = Math.min(n(), this.rows); i < k; i++) {
          this.grid.splice(this.y, 0, this.blankRow())
          this.grid.length = this.rows
        }
        break
      case 'M':
        for (let i = 0, k = Math.min(n(), this.rows); i < k; i++) {
          this.grid.splice(this.y, 1)
          this.grid.push(this.blankRow())
        }
        break
      case 'S':
        this.scrollUp(Math.min(n(), this.rows))
        break
      case 'T':
        this.scrollDown(Math.min(n(), this.rows))
        break
      case 's':
        this.saveCursor()
        break
      case 'u':
        this.restoreCursor()
        break
      case 'n':
        if (n(0, 0) === 6) this.onInput(`\x1b[${this.y + 1};${this.x + 1}R`)
        break
      case 'm':
        this.sgr(nums)
        break
      default: // scroll regions, tab stops, modes: not drawn
    }
  }

  sgr(nums) {
    if (nums.length === 0) nums = [0]
    for (let i = 0; i < nums.length; i++) {
      const p = nums[i] ?? 0
      if (p === 0) {
        this.fg = this.bg = null
        this.bold = this.inverse = false
      } else if (p === 1) this.bold = true
      else if (p === 22) this.bold = false
      else if (p === 7) this.inverse = true
      else if (p === 27) this.inverse = false
      else if (p >= 30 && p <= 37) this.fg = p - 30
      else if (p >= 90 && p <= 97) this.fg = p - 90
      else if (p === 39) this.fg = null
      else if (p >= 40 && p <= 47) this.bg = p - 40
      else if (p >= 100 && p <= 107) this.bg = p - 100
      else if (p === 49) this.bg = null
      else if (p === 38 || p === 48) {
        // 256 colours map to the 16 when they are among them; true colour is dropped.
        let colour = null
        if (nums[i + 1] === 5) {
          const c = nums[i + 2]
          if (c !== null && c < 16) colour = c % 8
          i += 2
        } else if (nums[i + 1] === 2) i += 4
        if (colour !== null) {
          if (p === 38) this.fg = colour
          else this.bg = colour
        }
      }
    }
  }

  alternate(on) {
    if (on && !this.alt) {
      this.alt = { grid: this.grid, x: this.x, y: this.y }
      this.grid = this.blankScreen()
    } else if (!on && this.alt) {
      ;({ grid: this.grid, x: this.x, y: this.y } = this.alt)
      this.alt = null
    }
  }

  schedule() {
    if (this.frame) return
    this.frame = requestAnimationFrame(() => {
      this.frame = null
      if (this.dirty) this.render()
    })
  }

  render() {
    this.dirty = false
    for (let r = 0; r < this.rows; r++) {
      this.paint(this.rowEls[r], this.grid[r], this.cursorVisible && r === this.y ? this.x : -1)
    }
    this.el.scrollTop = this.el.scrollHeight
  }

  /** Draws `cells` into `el` as runs of one style; the cell at `cursor` gets the cursor. */
  paint(el, cells, cursor) {
    const out = []
    let run = ''
    let cls = null
    const flush = () => {
      if (run === '') return
      if (cls) {
        const span = document.createElement('span')
        span.className = cls
        span.textContent = run
        out.push(span)
      } else out.push(document.createTextNode(run))
      run = ''
    }
    cells.forEach((cell, i) => {
      const s = i === cursor ? 'cur' : cell.s
      if (s !== cls) {
        flush()
        cls = s
      }
      run += cell.c
    })
    flush()
    el.replaceChildren(...out)
  }

  key(e) {
    const keys = {
      Enter: '\r',
      Backspace: '\x7f',
      Tab: '\t',
      Escape: '\x1b',
      ArrowUp: '\x1b[A',
      ArrowDown: '\x1b[B',
      ArrowRight: '\x1b[C',
      ArrowLeft: '\x1b[D',
      Home: '\x1b[H',
      End: '\x1b[F',
      Delete: '\x1b[3~',
      PageUp: '\x1b[5~',
      PageDown: '\x1b[6~',
      Insert: '\x1b[2~',
    }
    let out = null
    if (e.ctrlKey && !e.altKey && e.key.length === 1) {
      const k = e.key.toLowerCase()
      if (k === 'v' || (k === 'c' && String(window.getSelection()).length > 0)) return // paste / copy
      if (k >= 'a' && k <= 'z') out = String.fromCharCode(k.charCodeAt(0) - 96)
      else if (k === '[') out = '\x1b'
      else if (k === '\\') out = '\x1c'
      else if (k === ']') out = '\x1d'
      else if (k === ' ' || k === '@') out = '\x00'
    } else if (keys[e.key]) out = keys[e.key]
    else if ([...e.key].length === 1 && !e.metaKey) out = e.altKey ? `\x1b${e.key}` : e.key
    if (out === null) return
    e.preventDefault()
    this.onInput(out)
  }
}
