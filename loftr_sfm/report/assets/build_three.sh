#!/usr/bin/env bash
# Rebuild three.bundle.min.js: the parts of three.js (npm package "three", MIT) that report.js uses, with
# OrbitControls, as one minified script defining window.THREE (no modules, no network at view time).
# Needs node + npm; run it from anywhere: bash loftr_sfm/report/assets/build_three.sh
set -euo pipefail
THREE_VERSION=0.187.0
ESBUILD_VERSION=0.28.2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm init -y >/dev/null
npm install --silent --no-audit --no-fund "three@$THREE_VERSION" "esbuild@$ESBUILD_VERSION"
cat > entry.js <<'JS'
import { BufferAttribute, BufferGeometry, Color, LineBasicMaterial, LineSegments, PerspectiveCamera, Points,
  PointsMaterial, Scene, Vector3, WebGLRenderer } from 'three';
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
window.THREE = { BufferAttribute, BufferGeometry, Color, LineBasicMaterial, LineSegments, PerspectiveCamera, Points,
  PointsMaterial, Scene, Vector3, WebGLRenderer, OrbitControls };
JS
npx esbuild entry.js --bundle --minify --format=iife --legal-comments=none \
  --banner:js="/*! three.js $THREE_VERSION (https://threejs.org, MIT License, Copyright 2010-2026 three.js authors: see LICENSE.three.txt) + OrbitControls, bundled by build_three.sh */" \
  --outfile="$here/three.bundle.min.js"
cp node_modules/three/LICENSE "$here/LICENSE.three.txt"
