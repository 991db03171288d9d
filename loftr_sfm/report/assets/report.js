/* loftr_sfm report page: renders the JSON block #report-data (written by loftr_sfm.report). No network. */
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const T = window.THREE;
  const STATUS = ['selected, no matches', 'matched, failed verification', 'rejected by the inlier-ratio check', 'verified'];
  const CAMERA_COLOURS = { map: [0.93, 0.26, 0.2], query: [1.0, 0.62, 0.1], selected: [0.2, 0.95, 0.35] };
  let selectImage = function () {};  // set by the 3D view: (name) -> highlight its camera

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || v === '') return '';
    if (typeof v === 'number') return Number.isInteger(v) && digits === undefined ? v.toLocaleString('en-US') : v.toFixed(digits === undefined ? 3 : digits);
    return String(v);
  }
  function decode(b64, Type) {
    if (!b64) return new Type(0);
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Type(bytes.buffer);
  }
  function card(value, key, bad) {
    return el('div', { class: 'card' + (bad ? ' bad' : '') }, el('div', { class: 'v' }, value), el('div', { class: 'k' }, key));
  }
  function section(id, title, ...children) {
    return el('section', { id: id }, el('h2', {}, title), ...children);
  }
  // a sortable table: columns [{key, title, num, render}], rows: objects
  function table(id, columns, rows, rowClass) {
    const tbody = el('tbody');
    let sortKey = null, sortDir = 1;
    function fill() {
      tbody.textContent = '';
      const sorted = rows.slice();
      if (sortKey !== null) {
        sorted.sort(function (a, b) {
          const x = a[sortKey], y = b[sortKey];
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * sortDir;
        });
      }
      for (const r of sorted) {
        const tr = el('tr', { class: rowClass ? rowClass(r) : null, 'data-name': r.name });
        for (const c of columns) tr.appendChild(el('td', { class: c.num ? 'num' : null }, c.render ? c.render(r) : fmt(r[c.key])));
        tbody.appendChild(tr);
      }
    }
    const head = el('tr', {}, columns.map(function (c) {
      return el('th', { onclick: function () { sortDir = sortKey === c.key ? -sortDir : 1; sortKey = c.key; fill(); } }, c.title);
    }));
    fill();
    return el('table', { id: id }, el('thead', {}, head), tbody);
  }

  // ---------------------------------------------------------------- 3D view
  function view3d(scene) {
    const canvas = el('canvas');
    const tooltip = el('div', { class: 'tooltip' });
    const info = el('div', { class: 'info' }, 'Drag to rotate, right-drag to pan, wheel to zoom; hover or click a camera for its image.');
    const size = el('input', { type: 'range', min: '1', max: '8', step: '0.5', value: '2' });
    const showCams = el('input', { type: 'checkbox', checked: 'checked' });
    const reset = el('button', { type: 'button' }, 'reset view');
    const pts = scene.points;
    const legend = el('div', { class: 'legend' }, `${fmt(pts.shown)} points` + (pts.shown < pts.count ? ` of ${fmt(pts.count)}` : '') +
      `, ${scene.cameras.names.length} cameras` + (scene.cameras.kinds.includes('query') ? ' (orange: queries)' : ''));
    const box = el('div', { class: 'viewer', id: 'viewer' }, canvas, tooltip,
      el('div', { class: 'controls' }, el('label', {}, 'point size ', size), el('label', {}, showCams, ' cameras'), reset), legend);
    const wrap = el('div', {}, box, info);
    if (!T || !T.WebGLRenderer) { info.textContent = 'three.js did not load: no 3D view.'; return wrap; }

    let renderer;
    try {
      // multisampling costs much with very many points on software renderers and adds little to points
      renderer = new T.WebGLRenderer({ canvas: canvas, antialias: pts.shown < 200000, preserveDrawingBuffer: true });
    } catch (e) {
      info.textContent = 'WebGL is not available in this browser: no 3D view (' + e.message + ').';
      return wrap;
    }
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    const world = new T.Scene();
    world.background = new T.Color(0x15181c);
    const s = scene.scale;
    const camera = new T.PerspectiveCamera(50, 1, s / 1000, s * 200);
    const up = new T.Vector3().fromArray(scene.up);
    camera.up.copy(up);

    const xyz = decode(pts.xyz, Float32Array), rgb = decode(pts.rgb, Uint8Array);
    const pg = new T.BufferGeometry();
    pg.setAttribute('position', new T.BufferAttribute(xyz, 3));
    pg.setAttribute('color', new T.BufferAttribute(rgb, 3, true));
    const pmat = new T.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true });
    world.add(new T.Points(pg, pmat));

    const names = scene.cameras.names, kinds = scene.cameras.kinds;
    const centres = decode(scene.cameras.centres, Float32Array);
    const segs = decode(scene.cameras.segments, Float32Array);
    const colours = new Float32Array(segs.length);
    function paint(k, rgbv) { for (let v = 0; v < 16; v++) colours.set(rgbv, (k * 16 + v) * 3); }
    names.forEach(function (_, k) { paint(k, CAMERA_COLOURS[kinds[k]] || CAMERA_COLOURS.map); });
    const cg = new T.BufferGeometry();
    cg.setAttribute('position', new T.BufferAttribute(segs, 3));
    const colourAttr = new T.BufferAttribute(colours, 3);
    cg.setAttribute('color', colourAttr);
    const frustums = new T.LineSegments(cg, new T.LineBasicMaterial({ vertexColors: true }));
    if (segs.length) world.add(frustums);

    // initial view: from beyond the cameras' mean centre (or from above when they surround the scene)
    const mean = new T.Vector3();
    for (let k = 0; k < names.length; k++) mean.add(new T.Vector3(centres[3 * k], centres[3 * k + 1], centres[3 * k + 2]));
    if (names.length) mean.multiplyScalar(1 / names.length);
    function home() {
      let eye;
      if (mean.length() > 0.2 * s) eye = mean.clone().multiplyScalar(1.8).add(up.clone().multiplyScalar(0.4 * mean.length()));
      else {
        const side = Math.abs(up.x) < 0.9 ? new T.Vector3(1, 0, 0) : new T.Vector3(0, 1, 0);
        eye = up.clone().multiplyScalar(1.2 * s).add(side.cross(up).normalize().multiplyScalar(1.2 * s));
      }
      camera.position.copy(eye);
      controls.target.set(0, 0, 0);
      camera.lookAt(0, 0, 0);
      controls.update();
    }
    const controls = new T.OrbitControls(camera, canvas);
    let queued = false;
    function draw() { queued = false; renderer.render(world, camera); }
    function render() {  // at most one frame per display refresh, however many events ask for it
      if (!queued) { queued = true; requestAnimationFrame(draw); }
    }
    controls.addEventListener('change', render);
    home();

    function resize() {
      const w = box.clientWidth, h = box.clientHeight;
      if (!w || !h) return;
      renderer.setSize(w, h, false);
      camera.aspect = w / h;
      camera.updateProjectionMatrix();
      draw();  // at once (not at the next frame): a page captured right after loading shows the view
    }
    new ResizeObserver(resize).observe(box);
    resize();
    // level of detail: when a full frame is slow (software rendering, no GPU), draw a prefix of the points while
    // the view moves (the points are in random order: a prefix is a uniform subsample), all of them once it stops
    let moving = 0, fastCount = pts.shown;
    if (pts.shown > 50000) {
      const gl = renderer.getContext(), px = new Uint8Array(4), t0 = performance.now();
      renderer.render(world, camera);
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);  // waits for the frame
      const ms = performance.now() - t0;
      if (ms > 40) fastCount = Math.max(50000, Math.floor(pts.shown * 30 / ms));
    }
    controls.addEventListener('start', function () { clearTimeout(moving); pg.setDrawRange(0, fastCount); });
    controls.addEventListener('end', function () {
      clearTimeout(moving);
      moving = setTimeout(function () { pg.setDrawRange(0, Infinity); render(); }, 250);
    });
    size.addEventListener('input', function () { pmat.size = parseFloat(size.value); render(); });
    showCams.addEventListener('change', function () { frustums.visible = showCams.checked; render(); });
    reset.addEventListener('click', function () { home(); render(); });

    const byName = new Map(names.map(function (n, k) { return [n, k]; }));
    let selected = -1;
    function nearest(ev) {
      const r = canvas.getBoundingClientRect();
      const x = ev.clientX - r.left, y = ev.clientY - r.top;
      let best = -1, bestD = 12 * 12;
      const v = new T.Vector3();
      for (let k = 0; k < names.length; k++) {
        v.set(centres[3 * k], centres[3 * k + 1], centres[3 * k + 2]).project(camera);
        if (v.z > 1) continue;
        const sx = (v.x + 1) / 2 * r.width, sy = (1 - v.y) / 2 * r.height;
        const d = (sx - x) * (sx - x) + (sy - y) * (sy - y);
        if (d < bestD) { bestD = d; best = k; }
      }
      return [best, x, y];
    }
    canvas.addEventListener('pointermove', function (ev) {
      const [k, x, y] = nearest(ev);
      if (k < 0) { tooltip.style.display = 'none'; return; }
      tooltip.textContent = names[k] + (kinds[k] === 'query' ? ' (query)' : '');
      tooltip.style.left = (x + 12) + 'px';
      tooltip.style.top = (y + 8) + 'px';
      tooltip.style.display = 'block';
    });
    canvas.addEventListener('pointerleave', function () { tooltip.style.display = 'none'; });
    canvas.addEventListener('click', function (ev) {
      const k = nearest(ev)[0];
      if (k >= 0) selectImage(names[k]);
    });
    selectImage = function (name) {
      if (selected >= 0) paint(selected, CAMERA_COLOURS[kinds[selected]] || CAMERA_COLOURS.map);
      selected = byName.has(name) ? byName.get(name) : -1;
      if (selected >= 0) paint(selected, CAMERA_COLOURS.selected);
      colourAttr.needsUpdate = true;
      render();
      const row = (data.images || data.queries || []).find(function (r) { return r.name === name; });
      info.textContent = 'selected: ' + name + (row ? describe(row) : '') + (selected < 0 ? ' (no camera: not registered)' : '');
      document.querySelectorAll('tr.selected').forEach(function (tr) { tr.classList.remove('selected'); });
      document.querySelectorAll('tr[data-name]').forEach(function (tr) { if (tr.dataset.name === name) tr.classList.add('selected'); });
    };
    return wrap;
  }
  function describe(r) {
    if ('registered' in r) return r.registered ? ` — registered, ${fmt(r.points3D)} points, ${fmt(r.reprojection_error)} px, ${r.camera}` : ` — not registered: ${r.reason}`;
    return r.success ? ` — localized, ${fmt(r.inliers)} inliers` : ` — failed: ${r.message}`;
  }

  // ---------------------------------------------------------------- pair matrix
  function pairMatrix(pairs) {
    const n = pairs.names.length;
    const bin = Math.max(1, Math.ceil(n / 1200));
    const m = Math.max(1, Math.ceil(n / bin));
    const px = Math.max(1, Math.min(40, Math.floor(Math.max(320, Math.min(720, 4 * m)) / m)));
    const side = m * px;
    const canvas = el('canvas', { width: side, height: side, id: 'pair-matrix' });
    const tooltip = el('div', { class: 'tooltip' });
    const ctx = canvas.getContext('2d');
    const cells = new Map();
    let maxInl = pairs.min_inliers + 1;
    for (const r of pairs.rows) if (r[6] === 3) maxInl = Math.max(maxInl, r[5]);
    const lo = Math.log(pairs.min_inliers), hi = Math.log(maxInl);
    function colour(r) {
      if (r[6] === 3) {
        const t = hi > lo ? (Math.log(r[5]) - lo) / (hi - lo) : 1;  // verified: light to dark blue with the inliers
        return [Math.round(200 - 180 * t), Math.round(225 - 150 * t), Math.round(250 - 90 * t)];
      }
      if (r[6] === 2) return [225, 60, 45];
      if (r[6] === 1) return [165, 165, 165];
      return [228, 228, 228];
    }
    const img = ctx.createImageData(m, m);
    img.data.fill(255);
    // per cell (a bin of images when there are many) the pair with the best outcome, then the most inliers
    const best = new Int32Array(m * m).fill(-1);
    pairs.rows.forEach(function (r, idx) {
      cells.set(r[0] * n + r[1], r);
      cells.set(r[1] * n + r[0], r);
      const a = Math.floor(r[0] / bin), b = Math.floor(r[1] / bin);
      for (const [i, j] of [[a, b], [b, a]]) {
        const o = best[i * m + j];
        if (o >= 0) {
          const q = pairs.rows[o];
          if (r[6] < q[6] || (r[6] === q[6] && r[5] <= q[5])) continue;
        }
        best[i * m + j] = idx;
      }
    });
    for (let c = 0; c < m * m; c++) {
      if (best[c] < 0) continue;
      const col = colour(pairs.rows[best[c]]);
      img.data.set([col[0], col[1], col[2], 255], c * 4);
    }
    const off = document.createElement('canvas');
    off.width = m; off.height = m;
    off.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, side, side);
    // weak links: the cut after an image (name order), and the few pairs that cross it
    const index = new Map(pairs.names.map(function (nm, i) { return [nm, i]; }));
    ctx.strokeStyle = '#d400d4';
    ctx.lineWidth = 2;
    for (const w of pairs.weak_links) {
      const k = index.get(w.after);
      if (k === undefined) continue;
      const p = ((k + 1) / bin) * px;
      ctx.beginPath(); ctx.moveTo(p, 0); ctx.lineTo(p, side); ctx.moveTo(0, p); ctx.lineTo(side, p); ctx.stroke();
      for (const [a, b] of w.pairs || []) {
        const i = index.get(a), j = index.get(b);
        if (i === undefined || j === undefined) continue;
        for (const [x, y] of [[i, j], [j, i]]) ctx.strokeRect(Math.floor(y / bin) * px - 1, Math.floor(x / bin) * px - 1, px + 2, px + 2);
      }
    }
    canvas.addEventListener('pointermove', function (ev) {
      const rc = canvas.getBoundingClientRect();
      const i = Math.floor((ev.clientY - rc.top) / rc.height * m) * bin, j = Math.floor((ev.clientX - rc.left) / rc.width * m) * bin;
      if (i >= n || j >= n) { tooltip.style.display = 'none'; return; }
      const r = cells.get(i * n + j);
      let text = bin > 1 ? `images ${i + 1}-${Math.min(n, i + bin)} x ${j + 1}-${Math.min(n, j + bin)}` : `${pairs.names[i]} x ${pairs.names[j]}`;
      if (bin === 1) text += r ? `: ${STATUS[r[6]]}; ${r[2] ? 'selected' : 'not selected'}, ${fmt(r[3])} raw matches, ${fmt(r[4])} matches, ${r[5] >= 0 ? fmt(r[5]) : 'no'} inliers` : ': not a pair';
      tooltip.textContent = text;
      tooltip.style.left = (ev.clientX - rc.left + 12) + 'px';
      tooltip.style.top = (ev.clientY - rc.top + 8) + 'px';
      tooltip.style.display = 'block';
    });
    canvas.addEventListener('pointerleave', function () { tooltip.style.display = 'none'; });
    canvas.addEventListener('click', function (ev) {
      const rc = canvas.getBoundingClientRect();
      const i = Math.floor((ev.clientY - rc.top) / rc.height * m) * bin;
      if (i < n) selectImage(pairs.names[i]);
    });
    const counts = [0, 0, 0, 0];
    let selectedPairs = 0;
    for (const r of pairs.rows) { counts[r[6]]++; selectedPairs += r[2]; }
    const sw = function (c) { return el('span', { class: 'sw', style: `background: rgb(${c.join(',')})` }); };
    const legend = el('div', { class: 'legend-row' },
      sw(colour([0, 0, 0, 0, 0, pairs.min_inliers, 3])), sw(colour([0, 0, 0, 0, 0, maxInl, 3])), `verified (${pairs.min_inliers} to ${fmt(maxInl)} inliers)`,
      sw(colour([0, 0, 0, 0, 0, 0, 2])), 'rejected by the inlier-ratio check', sw(colour([0, 0, 0, 0, 0, 0, 1])), 'failed verification',
      sw(colour([0, 0, 0, 0, 0, 0, 0])), 'selected, no matches', el('span', { class: 'sw', style: 'background:#d400d4' }), 'weak link');
    const stats = el('div', { class: 'cards' }, card(fmt(selectedPairs), 'pairs selected'), card(fmt(pairs.rows.filter(function (r) { return r[4] > 0; }).length), 'pairs matched'),
      card(fmt(counts[3]), `pairs verified (>= ${pairs.min_inliers} inliers)`), card(fmt(counts[1] + counts[2]), 'pairs matched, not verified', counts[1] + counts[2] > 0),
      card(fmt(pairs.weak_links.length), 'weak links', pairs.weak_links.length > 0));
    const weak = pairs.weak_links.length ? el('ul', {}, pairs.weak_links.map(function (w) {
      return el('li', {}, `between ${w.after} and ${w.before} (name order): ${w.verified_pairs} verified pair(s)` +
        ((w.pairs || []).length ? ': ' + w.pairs.map(function (p) { return p.join(' x '); }).join(', ') : ''));
    })) : el('p', { class: 'info' }, 'No weak link: every cut of the images in name order is crossed by enough verified pairs.');
    const note = bin > 1 ? el('p', { class: 'info' }, `${n} images: each cell shows ${bin} x ${bin} images (their best pair).`) : null;
    return el('div', {}, stats, el('div', { class: 'row', style: 'margin-top:10px' },
      el('div', { class: 'matrix-wrap' }, canvas, tooltip),
      el('div', { style: 'max-width: 520px' }, el('p', {}, 'Image x image, in name order; the colour is the pair\'s outcome and verified inliers. ' +
        'Hover a cell for the pair, click to select its row\'s image.'), legend, note, el('h3', {}, 'Weak links'), weak)));
  }

  // ---------------------------------------------------------------- sections
  function summarySection() {
    const s = data.summary || {};
    const cards = el('div', { class: 'cards' });
    if (data.kind === 'localization') {
      cards.append(card(`${fmt(s.localized)} / ${fmt(s.queries)}`, 'queries localized', s.localized < s.queries),
        card(fmt(s.mean_time, 2) + ' s', 'mean time per query'), card(s.matcher || '', 'matcher'),
        card(fmt(s.map_images), 'map images'), card(fmt(s.map_points), 'map points'));
    } else {
      const total = s.num_images !== undefined ? s.num_images : (data.images || []).length;
      cards.append(card(`${fmt(s.registered || 0)} / ${fmt(total)}`, 'images registered', (s.registered || 0) < total),
        card(fmt(s.points), '3D points'), card(fmt(s.mean_track_length, 2), 'mean track length'),
        card(fmt(s.mean_reprojection_error, 3) + ' px', 'mean reprojection error'), card(s.matcher || '', 'matcher'), card(s.mapper || '', 'mapper'));
    }
    const parts = [cards];
    const times = Object.entries(data.times || {});
    if (times.length) {
      const max = Math.max.apply(null, times.map(function (t) { return t[1]; })) || 1;
      const total = times.reduce(function (a, t) { return a + t[1]; }, 0);
      parts.push(el('div', { class: 'row', style: 'margin-top:14px' }, el('div', { class: 'panel' }, el('strong', {}, 'Stage times'),
        el('table', {}, times.map(function (t) {
          return el('tr', {}, el('td', {}, t[0]), el('td', { class: 'num' }, fmt(t[1], 1) + ' s'),
            el('td', {}, el('span', { class: 'bar', style: `width:${Math.max(1, 240 * t[1] / max)}px` })));
        }), el('tr', {}, el('td', {}, el('strong', {}, 'total')), el('td', { class: 'num' }, fmt(total, 1) + ' s'), el('td'))))));
    }
    const extra = {};
    for (const k of ['attempts', 'shared_cameras', 'track_refinement', 'relative_filter']) if (s[k] !== undefined && s[k] !== null) extra[k] = s[k];
    if (Object.keys(extra).length) parts.push(el('details', {}, el('summary', {}, 'Mapping details'), el('pre', {}, JSON.stringify(extra, null, 1))));
    parts.push(el('details', {}, el('summary', {}, 'Options used'), el('pre', {}, JSON.stringify(data.options || {}, null, 1))));
    return section('summary', 'Summary', parts);
  }

  function imagesSection() {
    const rows = data.images;
    const only = el('input', { type: 'checkbox' });
    const cols = [
      { key: 'name', title: 'image', render: function (r) { return el('a', { href: '#view3d', onclick: function () { selectImage(r.name); } }, r.name); } },
      { key: 'registered', title: 'status', render: function (r) { return el('span', { class: r.registered ? 'status-ok' : 'status-bad' }, r.registered ? 'registered' : 'not registered'); } },
      { key: 'reason', title: 'why not' },
      { key: 'points3D', title: '3D points', num: true },
      { key: 'reprojection_error', title: 'reproj. error (px)', num: true },
      { key: 'camera', title: 'camera' },
      { key: 'keypoints', title: 'keypoints', num: true },
      { key: 'pairs', title: 'pairs', num: true },
      { key: 'verified_pairs', title: 'verified pairs', num: true },
    ];
    const tbl = table('images-table', cols, rows, function (r) { return r.registered ? '' : 'unregistered'; });
    only.addEventListener('change', function () {
      tbl.querySelectorAll('tbody tr').forEach(function (tr) { tr.style.display = only.checked && !tr.classList.contains('unregistered') ? 'none' : ''; });
    });
    const bad = rows.filter(function (r) { return !r.registered; }).length;
    return section('images', `Images (${rows.length}, ${bad} not registered)`, el('label', {}, only, ' only the images without a pose'), tbl);
  }

  function queriesSection() {
    const cols = [
      { key: 'name', title: 'query', render: function (r) { return el('a', { href: '#view3d', onclick: function () { selectImage(r.name); } }, r.name); } },
      { key: 'success', title: 'status', render: function (r) { return el('span', { class: r.success ? 'status-ok' : 'status-bad' }, r.success ? 'localized' : 'failed'); } },
      { key: 'message', title: 'why not' },
      { key: 'inliers', title: 'PnP inliers', num: true },
      { key: 'correspondences', title: '2D-3D', num: true },
      { key: 'matches', title: 'matches', num: true },
      { key: 'camera_source', title: 'camera' },
      { key: 'retrieved', title: 'retrieved map images', render: function (r) { return r.retrieved.join(', '); } },
      { key: 'time', title: 'time (s)', num: true },
    ];
    const tbl = table('images-table', cols, data.queries, function (r) { return r.success ? '' : 'unregistered'; });
    return section('images', `Queries (${data.queries.length})`, tbl);
  }

  function picturesSection() {
    const pics = data.pictures || [];
    const figs = pics.map(function (p) {
      const cap = data.kind === 'localization'
        ? `${p.names[0]} (query) x ${p.names[1]} (map): ${fmt(p.inliers)} PnP inliers, ${fmt(p.lines)} drawn on the map image that sees most of them`
        : `${p.title}: ${p.names[0]} x ${p.names[1]}, ${fmt(p.inliers)} inliers of ${fmt(p.matches)} matches (green: inliers, red: the others; at most 150 lines of each)`;
      return el('figure', {}, el('img', { src: 'data:image/jpeg;base64,' + p.jpeg, alt: p.names.join(' x ') }), el('figcaption', {}, cap));
    });
    return section('pictures', data.kind === 'localization' ? 'Queries and their inliers' : 'Match pictures',
      figs.length ? el('div', {}, figs) : el('p', { class: 'info' }, 'No pictures (no photo folder given, or no pair to show).'));
  }

  // ---------------------------------------------------------------- page
  document.title = data.title;
  const links = [['#summary', 'Summary'], ['#view3d', '3D view'], ['#images', data.kind === 'localization' ? 'Queries' : 'Images']];
  if (data.pairs) links.push(['#pairs', 'Pairs']);
  links.push(['#pictures', 'Pictures']);
  const main = el('main');
  document.body.append(
    el('header', {}, el('h1', {}, data.title), el('div', { class: 'meta' }, `${data.output} — written ${data.generated}` + (data.images_folder ? ` — photos: ${data.images_folder}` : ''))),
    el('nav', {}, links.map(function (l) { return el('a', { href: l[0] }, l[1]); })), main,
    el('footer', {}, 'Made by loftr_sfm. 3D view: three.js (MIT License).'));
  if ((data.notes || []).length) main.append(el('ul', { class: 'notes' }, data.notes.map(function (t) { return el('li', {}, t); })));
  main.append(summarySection());
  main.append(section('view3d', '3D view', view3d(data.scene)));
  main.append(data.kind === 'localization' ? queriesSection() : imagesSection());
  if (data.pairs) main.append(section('pairs', 'Pairs', pairMatrix(data.pairs)));
  main.append(picturesSection());
  document.body.dataset.ready = '1';
})();
