// Shared by the send and receive pages (included into their nonce'd <script>):
// pipe names as URL paths, refused with a reason before any request is made;
// commands quoted for the shell; random names.
var HoodyPipe = (function () {
  'use strict';

  function encodeSegment(segment) {
    // encodeURIComponent leaves !'()* alone: a shown command quotes with '.
    return encodeURIComponent(segment).replace(/[!'()*]/g, function (c) {
      return '%' + c.charCodeAt(0).toString(16).toUpperCase();
    });
  }

  function folded(path) {
    var s = path.toLowerCase();
    if (s.slice(-1) === '/') { s = s.slice(0, -1); }
    if (s.slice(-1) === '.') { return s.slice(0, -1); }
    return s.slice(-3) === '%2e' ? s.slice(0, -3) : s;
  }

  function isDots(segment) {
    var decoded = segment;
    try { decoded = decodeURIComponent(segment); } catch (e) { decoded = segment; }
    return decoded === '.' || decoded === '..';
  }

  // The URL path of a typed name, or why it cannot be one.
  function check(name, cfg) {
    if (!name) { return { error: 'Enter a name for the pipe.' }; }
    if (/[\u0000-\u001f\u007f]/.test(name)) { return { error: 'A name cannot contain control characters.' }; }
    if (name.indexOf('\\') >= 0) { return { error: 'A name cannot contain a backslash.' }; }
    var segments = name.split('/'), encoded = [];
    for (var i = 0; i < segments.length; i++) {
      var segment = segments[i];
      if (segment === '') { return { error: 'A name cannot start or end with "/", nor have "//".' }; }
      if (isDots(segment)) { return { error: 'A part of a name cannot be "." or "..".' }; }
      try { encoded.push(encodeSegment(segment)); } catch (e) { return { error: 'The name has a character that cannot be sent.' }; }
    }
    var path = encoded.join('/');
    if (path.length > cfg.maxName) {
      return { error: 'The name is too long: ' + path.length + ' characters in the URL, at most ' + cfg.maxName + '.' };
    }
    if (cfg.reserved.indexOf(folded(path)) >= 0) { return { error: '"' + name + '" is a page of this server, not a pipe name.' }; }
    return { path: cfg.prefix + path };
  }

  function shellQuote(word) {
    return /^[A-Za-z0-9_@%+=:,.\/-]+$/.test(word) ? word : "'" + word.replace(/'/g, "'\\''") + "'";
  }
  function command(words) { return words.map(shellQuote).join(' '); }

  function randomName() {
    var alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789', out = '', bytes = new Uint8Array(16);
    while (out.length < 8) {
      crypto.getRandomValues(bytes);
      for (var i = 0; i < bytes.length && out.length < 8; i++) {
        if (bytes[i] < 252) { out += alphabet[bytes[i] % 36]; }  // 252 = 7 * 36: no bias
      }
    }
    return out;
  }

  function randomToken() {
    var bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join('');
  }

  function count(value, low, high) {
    var s = String(value).trim();
    if (!/^[0-9]{1,4}$/.test(s)) { return null; }
    var n = parseInt(s, 10);
    return n >= low && n <= high ? n : null;
  }

  function readJSON(id) {
    var el = document.getElementById(id);
    try { return JSON.parse(el.textContent); } catch (e) { return {}; }
  }

  // Draw a QR code of `text` on `canvas` (qrcode-generator, vendored in the page).
  function drawQR(canvas, text) {
    /* global qrcode */
    var qr = qrcode(0, 'M');
    qr.addData(text);
    qr.make();
    var modules = qr.getModuleCount(), margin = 4, cell = Math.max(3, Math.floor(232 / (modules + 2 * margin)));
    var size = (modules + 2 * margin) * cell;
    canvas.width = size;
    canvas.height = size;
    var ctx = canvas.getContext('2d');
    ctx.fillStyle = '#ffffff';  // dark on light in both themes: what scanners read
    ctx.fillRect(0, 0, size, size);
    ctx.fillStyle = '#000000';
    for (var r = 0; r < modules; r++) {
      for (var c = 0; c < modules; c++) {
        if (qr.isDark(r, c)) { ctx.fillRect((c + margin) * cell, (r + margin) * cell, cell, cell); }
      }
    }
    canvas.setAttribute('data-text', text);
  }

  function copyText(text, button) {
    var label = button.textContent;
    function flash(word) {
      button.textContent = word;
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    if (navigator.clipboard && navigator.clipboard.writeText && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { flash('Copied'); }, function () { flash('Select it'); });
    } else {
      flash('Select it');
    }
  }

  return {
    check: check, command: command, shellQuote: shellQuote, randomName: randomName, randomToken: randomToken,
    count: count, readJSON: readJSON, drawQR: drawQR, copyText: copyText, encodeSegment: encodeSegment
  };
})();
