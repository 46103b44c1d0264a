// mathcoder view: the page. Model-written text only ever reaches the DOM as text nodes
// (textContent / createTextNode); LaTeX is rendered by KaTeX with trust: false, code is
// highlighted by highlight.js (which escapes). No innerHTML of data anywhere.
'use strict';

const main = () => document.getElementById('main');
window.viewTimings = [];
let state = { sources: null, runSummaries: {}, view: null };

// el('div', {class: 'x', href: '#/..'}, child, 'text', ...): children that are strings become
// text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-')) e.setAttribute(k, String(v));
    else if (['href', 'src', 'alt', 'type', 'value', 'placeholder', 'name', 'id', 'title', 'for', 'width'].includes(k)) e.setAttribute(k, String(v));
    else if (k === 'checked' || k === 'selected') e[k] = !!v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ': ' + r.status + ' ' + (await r.text()));
  return r.json();
}

function nextFrame() {
  return new Promise(res => requestAnimationFrame(() => setTimeout(res, 0)));
}

// Times fetch + render + the next frame, records it and shows it in the status line.
async function timed(label, fn) {
  const t0 = performance.now();
  const detail = await fn();
  await nextFrame();
  const ms = performance.now() - t0;
  const entry = { label, ms, detail: detail || '', at: performance.now() };
  window.viewTimings.push(entry);
  window.lastTiming = entry;
  document.getElementById('status').textContent = `${label}${detail ? ' (' + detail + ')' : ''}: ${ms.toFixed(0)} ms`;
  return entry;
}

const MATH_DELIMITERS = [
  { left: '$$', right: '$$', display: true },
  { left: '\\[', right: '\\]', display: true },
  { left: '\\(', right: '\\)', display: false },
  { left: '$', right: '$', display: false },
];

function renderMath(node) {
  if (typeof renderMathInElement !== 'function') return;
  renderMathInElement(node, {
    delimiters: MATH_DELIMITERS, throwOnError: false, trust: false, strict: 'ignore',
  });
}

function mathText(cls, text) {
  const d = el('div', { class: cls }, text);
  renderMath(d);
  return d;
}

function verdict(correct) {
  return el('span', { class: correct ? 'ok' : 'bad' }, correct ? 'correct' : 'wrong');
}

function blockView(b, i, diverges) {
  const cls = ['block', b.kind];
  if (b.traceback) cls.push('traceback');
  if (b.timed_out) cls.push('timeout');
  if (diverges) cls.push('diverges');
  const label = el('div', { class: 'kind' }, `#${i} ${b.kind}` +
    (b.timed_out ? ' · timed out' : b.traceback ? ' · traceback' : '') +
    (diverges ? ' · first divergence' : ''));
  const d = el('div', { class: cls.join(' '), 'data-index': i }, label);
  if (b.kind === 'code') {
    const code = el('code', { class: 'language-python' }, b.content);
    d.appendChild(el('pre', {}, code));
    if (window.hljs) hljs.highlightElement(code);
  } else if (b.kind === 'execution') {
    d.appendChild(el('pre', {}, b.content));
  } else {
    const t = el('div', {}, b.content);
    d.appendChild(t);
    renderMath(t);
  }
  return d;
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) p.set(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}

// ---- navigation ----

async function loadSources() {
  if (state.sources) return state.sources;
  state.sources = await getJSON('/api/sources');
  const nav = document.getElementById('nav');
  nav.textContent = '';
  for (const r of state.sources.runs) {
    nav.appendChild(el('a', { href: `#/run/${r.r}`, title: r.name },
      `run ${r.r}: ${shortName(r.name)} ${(100 * r.accuracy).toFixed(1)}%`));
  }
  if (state.sources.runs.length >= 2) nav.appendChild(el('a', { href: '#/compare/0/1?differ=1' }, 'compare'));
  for (const t of state.sources.training) nav.appendChild(el('a', { href: `#/training/${t.t}`, title: t.path }, `training ${t.t}: ${shortName(t.path)}`));
  for (const l of state.sources.logs) nav.appendChild(el('a', { href: `#/log/${l.l}`, title: l.path }, `log ${l.l}: ${shortName(l.path)}`));
  for (const a of state.sources.audits) nav.appendChild(el('a', { href: `#/audit/${a.a}`, title: a.path }, `audit ${a.a}: ${shortName(a.path)}`));
  return state.sources;
}

function shortName(p) {
  const parts = String(p).split('/');
  return parts.slice(-2).join('/');
}

async function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const seg = path.split('/').filter(Boolean);
  try {
    const src = await loadSources();
    if (seg.length === 0) {
      if (src.runs.length) return runView(0, params);
      if (src.training.length) return trainingView(0);
      if (src.logs.length) return logView(0);
      if (src.audits.length) return auditView(0);
      main().textContent = 'Nothing to show.';
      return;
    }
    const n = seg.slice(1).map(Number);
    if (seg[0] === 'run' && seg.length === 2) return runView(n[0], params);
    if (seg[0] === 'run' && seg[2] === 'p') return problemView(n[0], n[2]);
    if (seg[0] === 'compare' && seg.length === 3) return compareView(n[0], n[1], params);
    if (seg[0] === 'compare' && seg.length === 5) return pairView(n[0], n[1], n[2], n[3]);
    if (seg[0] === 'training' && seg.length === 2) return trainingView(n[0]);
    if (seg[0] === 'training' && seg.length === 3) return trainingRecordView(n[0], n[1]);
    if (seg[0] === 'log') return logView(n[0]);
    if (seg[0] === 'audit') return auditView(n[0]);
    main().textContent = 'No such page: ' + hash;
  } catch (e) {
    main().textContent = 'Error: ' + e.message;
  }
}

// ---- a run ----

const FILTERS = ['verdict', 'stop', 'dataset', 'subject', 'level', 'traceback', 'timeout', 'code', 'q'];

function select(name, options, value) {
  const s = el('select', { name });
  for (const [v, label] of options) s.appendChild(el('option', { value: v, selected: v === value }, label));
  return s;
}

async function runSummary(r) {
  if (!state.runSummaries[r]) state.runSummaries[r] = await getJSON(`/api/runs/${r}`);
  return state.runSummaries[r];
}

async function runView(r, params) {
  const filters = {};
  for (const f of FILTERS) filters[f] = params.get(f) || '';
  if (state.view && state.view.kind === 'run' && state.view.r === r && document.getElementById('run-list')) {
    // Same run: only the list changes (no page reload, header and charts stay).
    return timed('filter', () => refreshList(r, filters));
  }
  return timed('open run', async () => {
    const s = await runSummary(r);
    const m = main();
    m.textContent = '';
    state.view = { kind: 'run', r };
    m.appendChild(el('h2', {}, s.name));
    let head = `${s.total} records, ${s.correct} correct (${(100 * s.accuracy).toFixed(2)}%) · dataset ${s.dataset}`;
    if (s.benchmark_size && s.benchmark_size > s.total) head += ` · only the authors' -correct records: ${s.total} of ${s.benchmark_size}, counting the missing ones wrong ${(100 * s.benchmark_accuracy).toFixed(2)}%`;
    m.appendChild(el('p', { class: 'header', id: 'run-header' }, head));
    const st = s.stats;
    m.appendChild(el('p', { class: 'muted' }, `per solution: ${st.blocks.toFixed(1)} blocks, ${st.code_blocks.toFixed(1)} code blocks, ${st.errors_per_solution.toFixed(2)} errors (${(100 * st.with_error).toFixed(1)}% hit an error)` +
      (s.agreement ? ` · agreement with the authors' verdicts ${s.agreement.agree}/${s.agreement.records}` : '') +
      (s.summary ? ` · stop reasons ${JSON.stringify(s.summary.stop_reasons)} · mean ${s.summary.mean_total_ms.toFixed(0)} ms (generate ${s.summary.mean_generate_ms.toFixed(0)}, execute ${s.summary.mean_execute_ms.toFixed(0)})` : '')));
    const charts = el('div', { class: 'charts' });
    if (s.math_table) charts.appendChild(el('figure', {}, el('img', { id: 'heatmap', src: `/api/runs/${r}/heatmap.svg`, alt: 'MATH accuracy by subject and level' }), el('figcaption', {}, 'MATH accuracy (%) by subject and level (the table mathcoder grade prints)')));
    charts.appendChild(el('figure', {}, el('img', { id: 'codeblocks', src: `/api/runs/${r}/code-blocks.svg`, alt: 'accuracy by number of code blocks' }), el('figcaption', {}, 'accuracy by number of code blocks')));
    m.appendChild(charts);
    const form = el('form', { class: 'filters', id: 'filters' },
      el('label', {}, 'verdict', select('verdict', [['', 'any'], ['correct', 'correct'], ['wrong', 'wrong']], filters.verdict)),
      el('label', {}, 'stop', select('stop', [['', 'any'], ...s.stops.map(x => [x, x]), ['none', 'not recorded']], filters.stop)),
      el('label', {}, 'dataset', select('dataset', [['', 'any'], ...s.datasets.map(x => [x, x])], filters.dataset)),
      el('label', {}, 'subject', select('subject', [['', 'any'], ...s.subjects.map(x => [x, x])], filters.subject)),
      el('label', {}, 'level', select('level', [['', 'any'], ...[1, 2, 3, 4, 5].map(x => [String(x), String(x)])], filters.level)),
      el('label', {}, 'traceback', select('traceback', [['', 'any'], ['yes', 'yes'], ['no', 'no']], filters.traceback)),
      el('label', {}, 'timed out', select('timeout', [['', 'any'], ['yes', 'yes'], ['no', 'no']], filters.timeout)),
      el('label', {}, 'code blocks', select('code', [['', 'any'], ...[0, 1, 2, 3, 4, 5, 6, 7].map(x => [String(x), String(x)]), ['8+', '8+']], filters.code)),
      el('label', {}, 'search', el('input', { type: 'search', name: 'q', value: filters.q, placeholder: 'text in question or solution' })));
    let debounce = null;
    const apply = () => {
      const f = {};
      for (const name of FILTERS) f[name] = form.elements[name].value;
      location.hash = `#/run/${r}` + qs(f);
    };
    form.addEventListener('change', apply);
    form.addEventListener('submit', ev => { ev.preventDefault(); apply(); });
    form.elements.q.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(apply, 250); });
    m.appendChild(form);
    m.appendChild(el('p', { class: 'header', id: 'list-count' }));
    const table = el('table', { class: 'problems', id: 'run-list' },
      el('thead', {}, el('tr', {}, ['#', 'id', 'verdict', 'answer (gold)', 'subject / level', 'code', 'flags', 'question'].map(h => el('th', {}, h)))),
      el('tbody', {}));
    table.tBodies[0].addEventListener('click', ev => {
      const tr = ev.target.closest('tr[data-n]');
      if (tr && !ev.target.closest('a')) location.hash = `#/run/${r}/p/${tr.getAttribute('data-n')}`;
    });
    m.appendChild(table);
    return refreshList(r, filters);
  });
}

// The list is fetched and rendered a page at a time; the next page comes when the end of the
// table scrolls into view (or "show more" is clicked), so any run opens as fast as a short one.
const PAGE = 200;

function listRow(r, p) {
  const flags = el('td', {});
  if (p.traceback) flags.appendChild(el('span', { class: 'tag tb' }, 'traceback'));
  if (p.timed_out) flags.appendChild(el('span', { class: 'tag to' }, 'timeout'));
  if (p.stop && p.stop !== 'end_of_message') flags.appendChild(el('span', { class: 'tag' }, p.stop));
  if (p.authors !== null && p.authors !== p.correct) flags.appendChild(el('span', { class: 'tag' }, 'authors: ' + (p.authors ? 'correct' : 'wrong')));
  return el('tr', { class: 'row', 'data-n': p.n },
    el('td', {}, String(p.n)),
    el('td', {}, el('a', { href: `#/run/${r}/p/${p.n}` }, p.id || '(no id)')),
    el('td', {}, verdict(p.correct)),
    el('td', {}, `${p.extracted === null ? '—' : p.extracted} (${p.gold})`),
    el('td', {}, p.subject ? `${p.subject} L${p.level ?? '?'}` : ''),
    el('td', {}, String(p.code_blocks)),
    flags,
    el('td', { class: 'question' }, p.question));
}

async function refreshList(r, filters) {
  const generation = (state.listGeneration = (state.listGeneration || 0) + 1);
  const list = await getJSON(`/api/runs/${r}/problems` + qs({ ...filters, limit: PAGE }));
  if (generation !== state.listGeneration) return 'superseded';
  const tbody = document.getElementById('run-list').tBodies[0];
  const frag = document.createDocumentFragment();
  for (const p of list.rows) frag.appendChild(listRow(r, p));
  tbody.replaceChildren(frag);
  const pct = list.matched ? (100 * list.matched_correct / list.matched).toFixed(1) : '0.0';
  document.getElementById('list-count').textContent = `${list.matched} of ${list.total} match, ${list.matched_correct} correct (${pct}%)`;
  let shown = list.rows.length;
  const old = document.getElementById('more');
  if (old) old.remove();
  if (shown < list.matched) {
    const more = el('button', { class: 'more', id: 'more', type: 'button' }, `show more (${list.matched - shown} left)`);
    let loading = false;
    const loadMore = async () => {
      if (loading || generation !== state.listGeneration) return;
      loading = true;
      const next = await getJSON(`/api/runs/${r}/problems` + qs({ ...filters, offset: shown, limit: PAGE }));
      if (generation !== state.listGeneration) return;
      const f = document.createDocumentFragment();
      for (const p of next.rows) f.appendChild(listRow(r, p));
      tbody.appendChild(f);
      shown += next.rows.length;
      if (shown >= list.matched) { more.remove(); observer.disconnect(); } else more.textContent = `show more (${list.matched - shown} left)`;
      loading = false;
    };
    more.addEventListener('click', loadMore);
    const observer = new IntersectionObserver(entries => { if (entries.some(e => e.isIntersecting)) loadMore(); });
    document.getElementById('run-list').after(more);
    observer.observe(more);
  }
  return `${list.matched} rows, ${shown} rendered`;
}

// ---- a problem ----

function answers(p) {
  const dl = el('dl', { class: 'answers' });
  const add = (k, v) => { dl.appendChild(el('dt', {}, k)); dl.appendChild(v instanceof Node ? el('dd', {}, v) : el('dd', {}, v)); };
  add('gold', p.gold);
  add('extracted', p.extracted === null ? '(none)' : p.extracted);
  add('verdict', el('span', {}, verdict(p.correct), ' — ', p.reason));
  if (p.authors !== null) add("authors' verdict", verdict(p.authors));
  if (p.stop) add('stop', p.stop + (p.stop_detail ? ': ' + p.stop_detail : ''));
  if (p.subject) add('subject / level', `${p.subject} / ${p.level ?? '?'}`);
  if (p.timings) {
    const t = p.timings;
    add('timings', `${t.rounds} rounds, ${t.generated_tokens} tokens; total ${t.total_ms.toFixed(0)} ms = generate ${t.generate_ms.toFixed(0)} ms + execute ${t.execute_ms.toFixed(0)} ms` +
      (t.rounds ? ` (mean per round: ${(t.total_ms / t.rounds).toFixed(0)} ms)` : '') + ` · ${t.backend}`);
  }
  add('source', `${p.file}:${p.line}`);
  return dl;
}

function solution(p, diverge) {
  const d = el('div', { class: 'solution' });
  p.blocks.forEach((b, i) => d.appendChild(blockView(b, i, diverge === i)));
  return d;
}

async function problemView(r, n) {
  return timed('open problem', async () => {
    const p = await getJSON(`/api/runs/${r}/problems/${n}`);
    state.view = { kind: 'problem', r, n };
    const m = main();
    m.textContent = '';
    m.appendChild(el('p', { class: 'muted' }, el('a', { href: `#/run/${r}` }, '← ' + p.run_name),
      ' · ', n > 0 ? el('a', { href: `#/run/${r}/p/${n - 1}` }, 'previous') : '', ' ',
      el('a', { href: `#/run/${r}/p/${n + 1}` }, 'next')));
    m.appendChild(el('h2', {}, `${p.id || '(no id)'}${p.sample ? ' sample ' + p.sample : ''}`));
    m.appendChild(mathText('question-box', p.question));
    m.appendChild(answers(p));
    m.appendChild(solution(p, null));
    return `${p.blocks.length} blocks`;
  });
}

// ---- two runs ----

function runOptions(name, value) {
  return select(name, state.sources.runs.map(x => [String(x.r), `run ${x.r}: ${shortName(x.name)}`]), String(value));
}

async function compareView(a, b, params) {
  const differ = params.get('differ') === '1';
  return timed('compare', async () => {
    const c = await getJSON(`/api/compare/${a}/${b}` + (differ ? '?differ=1' : ''));
    state.view = { kind: 'compare', a, b };
    const m = main();
    m.textContent = '';
    const form = el('form', { class: 'filters', id: 'compare-form' },
      el('label', {}, 'A', runOptions('a', a)), el('label', {}, 'B', runOptions('b', b)),
      el('label', {}, el('input', { type: 'checkbox', name: 'differ', checked: differ }), 'only where verdicts differ'));
    form.addEventListener('change', () => {
      location.hash = `#/compare/${form.elements.a.value}/${form.elements.b.value}` + (form.elements.differ.checked ? '?differ=1' : '');
    });
    m.appendChild(form);
    m.appendChild(el('p', { class: 'header', id: 'compare-header' },
      `A: ${c.a_name} · B: ${c.b_name} · ${c.common} problems in both: both correct ${c.both_correct}, only A ${c.only_a}, only B ${c.only_b}, neither ${c.neither}` +
      ` · unmatched: A ${c.a_unmatched}, B ${c.b_unmatched}`));
    const tbody = el('tbody', {});
    for (const p of c.pairs) {
      tbody.appendChild(el('tr', { class: 'row', 'data-a': p.a, 'data-b': p.b },
        el('td', {}, el('a', { href: `#/compare/${a}/${b}/${p.a}/${p.b}` }, p.id || '(no id)')),
        el('td', {}, verdict(p.a_correct)), el('td', {}, verdict(p.b_correct)),
        el('td', {}, p.subject ? `${p.subject} L${p.level ?? '?'}` : ''),
        el('td', { class: 'question' }, p.question)));
    }
    tbody.addEventListener('click', ev => {
      const tr = ev.target.closest('tr[data-a]');
      if (tr && !ev.target.closest('a')) location.hash = `#/compare/${a}/${b}/${tr.getAttribute('data-a')}/${tr.getAttribute('data-b')}`;
    });
    m.appendChild(el('table', { class: 'problems', id: 'compare-list' },
      el('thead', {}, el('tr', {}, ['id', 'A', 'B', 'subject / level', 'question'].map(h => el('th', {}, h)))), tbody));
    return `${c.pairs.length} pairs`;
  });
}

async function pairView(a, b, na, nb) {
  return timed('open pair', async () => {
    const c = await getJSON(`/api/compare/${a}/${b}/${na}/${nb}`);
    state.view = { kind: 'pair' };
    const m = main();
    m.textContent = '';
    m.appendChild(el('p', { class: 'muted' }, el('a', { href: `#/compare/${a}/${b}?differ=1` }, '← comparison')));
    m.appendChild(el('h2', {}, c.a.id || '(no id)'));
    m.appendChild(mathText('question-box', c.a.question));
    const fd = c.first_divergence;
    m.appendChild(el('p', { class: 'header', id: 'divergence' }, fd === null ? 'The two solutions are the same.' : `First diverging block: #${fd}`));
    const col = (p, label) => el('div', { class: 'column' }, el('h3', {}, `${label}: ${shortName(p.run_name)}`), answers(p), solution(p, fd));
    m.appendChild(el('div', { class: 'side' }, col(c.a, 'A'), col(c.b, 'B')));
    const first = m.querySelector('.block.diverges');
    if (first) first.scrollIntoView({ block: 'center' });
    return fd === null ? 'same' : `diverges at ${fd}`;
  });
}

// ---- training data and logs ----

async function trainingView(t) {
  return timed('open training data', async () => {
    const d = await getJSON(`/api/training/${t}`);
    state.view = { kind: 'training' };
    const m = main();
    m.textContent = '';
    m.appendChild(el('h2', {}, d.path));
    const r = d.report;
    m.appendChild(el('p', { class: 'header' }, `${r.records} records · ${r.blocks_per_record.toFixed(1)} blocks and ${r.code_blocks_per_record.toFixed(1)} code blocks per record · ${r.error_executions} executions with an error` +
      (r.tokenizer ? ` · tokens shown with the loss mask (execution ${r.loss_on_execution ? 'trained' : 'masked'}, prompt ${r.loss_on_prompt ? 'trained' : 'masked'})` : ' · give --model DIR to see trained and masked tokens')));
    if (d.stats && d.stats.rows.length) {
      const fmt = v => v === null || v === undefined ? '-' : (typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v));
      const cols = ['source', 'group', 'attempted', 'draws', 'solved', 'kept', 'blocks_per_solution', 'code_blocks_per_solution', 'tokens_per_solution', 'teacher_tokens'];
      const sb = el('tbody', {});
      for (const r of d.stats.rows) sb.appendChild(el('tr', {}, cols.map(c => el('td', {}, fmt(r[c])))));
      m.appendChild(el('h3', {}, `data report (tokens: ${d.stats.token_unit})`));
      m.appendChild(el('table', { class: 'problems', id: 'data-report' },
        el('thead', {}, el('tr', {}, ['source', 'group', 'attempted', 'draws', 'solved', 'kept', 'blocks', 'code blocks', 'tokens', 'teacher tokens'].map(h => el('th', {}, h)))), sb));
    }
    const tbody = el('tbody', {});
    for (const row of d.rows) {
      tbody.appendChild(el('tr', { class: 'row' },
        el('td', {}, el('a', { href: `#/training/${t}/${row.n}` }, String(row.n))),
        el('td', {}, String(row.line)), el('td', {}, String(row.blocks)), el('td', {}, String(row.code_blocks)),
        el('td', { class: 'question' }, row.question)));
    }
    m.appendChild(el('table', { class: 'problems', id: 'training-list' },
      el('thead', {}, el('tr', {}, ['#', 'line', 'blocks', 'code', 'question'].map(h => el('th', {}, h)))), tbody));
    return `${d.rows.length} records`;
  });
}

async function trainingRecordView(t, n) {
  return timed('open training record', async () => {
    const d = await getJSON(`/api/training/${t}/${n}`);
    state.view = { kind: 'training-record' };
    const m = main();
    m.textContent = '';
    m.appendChild(el('p', { class: 'muted' }, el('a', { href: `#/training/${t}` }, '← ' + d.path)));
    m.appendChild(el('h2', {}, `record ${n} (line ${d.line})`));
    m.appendChild(mathText('question-box', d.question));
    if (d.tokens && !d.tokens.error) {
      m.appendChild(el('p', { class: 'header', id: 'token-counts' }, `${d.tokens.tokens} tokens: ${d.tokens.trained} trained (green), ${d.tokens.masked} masked (grey, struck through)`));
      const box = el('div', { class: 'tokens', id: 'tokens' });
      for (const run of d.tokens.runs) box.appendChild(el('span', { class: run.trained ? 'trained' : 'masked' }, run.text));
      m.appendChild(box);
    } else if (d.tokens && d.tokens.error) {
      m.appendChild(el('p', { class: 'bad' }, d.tokens.error));
    }
    m.appendChild(el('h3', {}, 'blocks'));
    m.appendChild(solution(d, null));
    return `${d.blocks.length} blocks`;
  });
}

async function logView(l) {
  return timed('open training log', async () => {
    const d = await getJSON(`/api/logs/${l}`);
    state.view = { kind: 'log' };
    const m = main();
    m.textContent = '';
    m.appendChild(el('h2', {}, d.path));
    const s = d.steps;
    const last = s[s.length - 1];
    m.appendChild(el('p', { class: 'header', id: 'log-header' }, s.length ? `${s.length} steps · loss ${s[0].loss.toFixed(4)} → ${last.loss.toFixed(4)} · final lr ${last.lr.toExponential(2)} · ${s.reduce((a, x) => a + x.seconds, 0).toFixed(1)} s` : 'no steps'));
    m.appendChild(el('div', { class: 'charts' },
      el('img', { id: 'loss-chart', src: `/api/logs/${l}/loss.svg`, alt: 'loss' }),
      el('img', { id: 'lr-chart', src: `/api/logs/${l}/lr.svg`, alt: 'learning rate' }),
      el('img', { id: 'grad-chart', src: `/api/logs/${l}/grad-norm.svg`, alt: 'gradient norm' })));
    const tbody = el('tbody', {});
    for (const x of s) {
      tbody.appendChild(el('tr', {}, [x.step, x.loss.toFixed(5), x.lr.toExponential(3), x.tokens, x.target_tokens, x.grad_norm.toFixed(3), x.seconds.toFixed(2)].map(v => el('td', {}, String(v)))));
    }
    m.appendChild(el('table', { class: 'problems' },
      el('thead', {}, el('tr', {}, ['step', 'loss', 'lr', 'tokens', 'target tokens', 'grad norm', 's'].map(h => el('th', {}, h)))), tbody));
    return `${s.length} steps`;
  });
}

// ---- audit differences ----

async function auditView(a) {
  return timed('open audit differences', async () => {
    const d = await getJSON(`/api/audits/${a}`);
    state.view = { kind: 'audit' };
    const m = main();
    m.textContent = '';
    m.appendChild(el('h2', {}, d.path));
    const counts = {};
    for (const x of d.differences) counts[x.class] = (counts[x.class] || 0) + 1;
    m.appendChild(el('p', { class: 'header', id: 'audit-header' }, `${d.differences.length} differing cells · ` +
      Object.entries(counts).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${v}`).join(' · ')));
    const list = el('div', { id: 'audit-list' });
    for (const x of d.differences) {
      const code = el('code', { class: 'language-python' }, x.code);
      const item = el('div', { class: 'block audit', 'data-class': x.class },
        el('div', { class: 'kind' }, `${x.file}:${x.line} · cell ${x.cell} · ${x.class}`),
        el('pre', {}, code),
        el('div', { class: 'pair' },
          el('div', {}, el('div', { class: 'muted' }, 'ours'), el('pre', { class: 'ours' }, x.ours)),
          el('div', {}, el('div', { class: 'muted' }, 'recorded'), el('pre', { class: 'recorded' }, x.recorded))));
      if (window.hljs) hljs.highlightElement(code);
      list.appendChild(item);
    }
    m.appendChild(list);
    return `${d.differences.length} cells`;
  });
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);
