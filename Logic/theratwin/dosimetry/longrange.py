"""Long-range photon term of the dose-voxel-kernel engine: no photon energy is dropped at the kernel's edge.

The photon point kernel is split (see :mod:`theratwin.dosimetry.kernels`) into a short-range part
``e(r) exp(-r^2/s^2)`` held by the voxel kernel and a smooth long-range part
``e_L(r) = e(r) (1 - exp(-r^2/s^2))`` (:func:`~theratwin.dosimetry.kernels.long_range_photon_density`), whose
Fourier transform falls off like ``exp(-k^2 s^2 / 4)``. The long-range dose ``L = TIA * e_L`` is therefore
band-limited: it is computed from the low spatial frequencies of the TIA map, on a grid of spacing ``H = 5``
fine voxels (``s`` balances the short part's tail at the fine kernel's edge against the long part's spectrum at
the coarse Nyquist frequency, see ``_SPLIT_BALANCE``), with a linear (zero-padded) convolution over the whole
volume, so photons travel as far as the grid extends.

Two ways to get there, with the same kernel:

* :meth:`LongRangePhotons.spectral` (the fast path, used inside :func:`~theratwin.dosimetry.fft_convolve`): the
  low-frequency block of the fine TIA spectrum, which the short-range convolution computes anyway, gives the
  band-limited TIA at the coarse sample points; after the coarse convolution, the long-range dose goes back into
  the same low-frequency block of the fine dose spectrum, so the fine inverse FFT interpolates it (trigonometric
  interpolation, exact for a band-limited field) at no extra cost. The fine FFT works on a periodic domain, so
  the coarse dose is made periodic-smooth across the padding (a cubic Hermite bridge over the samples outside
  the volume, which the crop discards).
* :meth:`LongRangePhotons.real_space` (overlap-add slabs, multi-kernel density correction): block means of the
  TIA on an integer grid of half that spacing, the same coarse convolution, trilinear interpolation back.

Energy: the short-range part beyond the kernel (radius ``R h``, 14 voxels) holds ~0.1 % of the photon energy;
everything else is deposited somewhere on the grid or leaves it (tested over a 61 cm water cube against ray
casting). The long-range part is computed for water
(1 g/mL); the engine divides energy by the local density like the rest of its dose.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft

from .kernels import long_range_photon_density

__all__ = ["LongRangePhotons", "split_length_mm", "MIN_RADIUS_VOXELS"]

#: Coarse spacing H in fine voxels (of the smallest voxel side) and the fine kernel's radius R (voxels).
_COARSE_VOXELS = 5.0
MIN_RADIUS_VOXELS = 14
#: Split length s = sqrt(2 H R h / pi): the short-range part's Gaussian tail at the kernel's edge,
#: 2 exp(-(R h / s)^2), and the long-range spectrum at the coarse Nyquist frequency, exp(-(pi s / 2 H)^2), are
#: then equally small (2.4 % and 1.2 % for H = 5 h, R = 14: the 14-voxel kernel pads a 256^3 grid to the same
#: fast FFT size, 270, as the default 10 voxels, and the 5-voxel coarse grid keeps the coarse convolution within
#: the dose engine's budget; against an exact full-range convolution the long-range dose of the demo patient is
#: within 0.84 % of the total dose in every body voxel).
_SPLIT_BALANCE = math.sqrt(2.0 * _COARSE_VOXELS * MIN_RADIUS_VOXELS / math.pi)
#: SD of the Gaussian that assigns the TIA to the coarse samples, per coarse spacing.
_ASSIGN_SIGMA_PER_COARSE = 0.7

# Gy in water per (Bq h/mL x mm^3 x MeV/mm^3): 3600 s/h x 1e-3 mL/mm^3 x 1.602176634e-13 J/MeV / 1e-6 kg/mm^3
_GY_PER_BQH_ML_MM3_MEV_MM3 = 3600.0 * 1e-3 * 1.602176634e-13 / 1e-6


def split_length_mm(voxel_mm: tuple[float, float, float]) -> float:
    """Split length ``s`` (mm) of the photon kernel for a grid: 5.5 x the smallest voxel side (see above)."""
    return _SPLIT_BALANCE * float(min(voxel_mm))


@lru_cache(maxsize=8)
def _coarse_kernel_spectrum(name: str, spacing_zyx: tuple[float, float, float], m_zyx: tuple[int, int, int],
                            q_zyx: tuple[int, int, int], split_mm: float, sigma_mm: float) -> np.ndarray:
    """Spectrum (rfftn on the ``Q`` grid) of the coarse kernel, in Gy per (Bq h/mL) of one coarse sample.

    The long-range kernel is sampled at the coarse offsets ``d * H`` (|d_a| < M_a, wrapped), and divided in
    Fourier space by the transfer function ``exp(-k^2 sigma^2 / 2)`` of the Gaussian that assigns the TIA to the
    coarse samples, so that assignment followed by this kernel equals the long-range kernel."""
    h = np.asarray(spacing_zyx, dtype=float)
    # radial table (smooth function: linear interpolation at H/20 steps is exact to ~1e-5)
    r_max = float(np.sqrt(np.sum(((np.asarray(q_zyx) // 2 + 1) * h) ** 2)))
    step = float(h.min()) / 20.0
    r_tab = np.arange(0.0, r_max + 2 * step, step)
    e_tab = long_range_photon_density(name, r_tab, split_mm)
    cell_mm3 = float(np.prod(h))
    # offsets on the Q torus: 0..Q/2 and back (the linear convolution only uses |d| < M <= Q/2)
    d = [np.minimum(np.arange(q), q - np.arange(q)) * hh for q, hh in zip(q_zyx, h, strict=True)]
    r = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)
    kernel = np.interp(r, r_tab, e_tab) * cell_mm3 * _GY_PER_BQH_ML_MM3_MEV_MM3
    spec = scipy.fft.rfftn(kernel)
    if sigma_mm > 0:
        # the assignment samples the Gaussian at the coarse points: its transfer function on the lattice is the
        # periodised exp(-k^2 sigma^2/2), a product over axes (aliases |m| <= 2 suffice for sigma >= H/2)
        for axis, (freq, hh) in enumerate(zip((scipy.fft.fftfreq(q_zyx[0]), scipy.fft.fftfreq(q_zyx[1]),
                                               scipy.fft.rfftfreq(q_zyx[2])), h, strict=True)):
            k = 2.0 * np.pi * freq / hh
            g = sum(np.exp(-0.5 * ((k + 2.0 * np.pi * m / hh) * sigma_mm) ** 2) for m in range(-2, 3))
            shape = [1, 1, 1]
            shape[axis] = -1
            spec /= np.reshape(g, shape)
    out = spec.astype(np.complex64)
    out.setflags(write=False)
    return out


def _signed_bins(m: int) -> np.ndarray:
    """Signed frequency indices of a length-``m`` DFT in FFT order."""
    return np.concatenate([np.arange((m + 1) // 2), np.arange(-(m // 2), 0)])


def _low_indices(p: int, m: int) -> np.ndarray:
    """FFT bins of a length-``p`` transform that form a length-``m`` transform (frequencies ``-m//2 .. (m-1)//2``)."""
    return np.mod(_signed_bins(m), p).astype(np.intp)


def _zero_nyquist(spec: np.ndarray, m_zyx: tuple[int, int, int]) -> None:
    """Zero the (ambiguous) Nyquist bins of even-sized axes of an rfftn spectrum of shape ``m_zyx``."""
    if m_zyx[0] % 2 == 0:
        spec[m_zyx[0] // 2] = 0
    if m_zyx[1] % 2 == 0:
        spec[:, m_zyx[1] // 2] = 0
    if m_zyx[2] % 2 == 0:
        spec[:, :, m_zyx[2] // 2] = 0


def _gaussian_assignment(spec: np.ndarray, padded: tuple[int, int, int], m: tuple[int, int, int],
                         voxel_zyx: tuple[float, float, float], sigma_mm: float) -> np.ndarray:
    """Spectrum (length-``m`` rfftn) of the samples at ``x_j = j P/M`` of the TIA map blurred by a Gaussian of
    SD ``sigma_mm``, from the fine spectrum: each coarse bin sums the fine bins that alias onto it, weighted by the
    Gaussian's transfer function. With sigma = 0.7 H the Gaussian is below 1e-4 beyond the first aliases, which
    are all that is summed (the bin itself and its neighbours at +-M along one axis)."""
    base = [_signed_bins(m[0]), _signed_bins(m[1]), np.arange(m[2] // 2 + 1)]

    def gauss(axis: int, n: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi * n / (padded[axis] * voxel_zyx[axis])
        return np.exp(-0.5 * (k * sigma_mm) ** 2).astype(np.float32)

    out = np.zeros((m[0], m[1], m[2] // 2 + 1), np.complex64)
    for shift in ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        n = [b + s * mm for b, s, mm in zip(base, shift, m, strict=True)]
        w = gauss(0, n[0])[:, None, None] * gauss(1, n[1])[None, :, None] * gauss(2, n[2])[None, None, :]
        if shift[2] >= 0:
            block = spec[np.ix_(np.mod(n[0], padded[0]), np.mod(n[1], padded[1]), n[2])]
        else:
            # negative x frequencies are the complex conjugates of the mirrored positive ones (real input)
            block = np.conj(spec[np.ix_(np.mod(-n[0], padded[0]), np.mod(-n[1], padded[1]), -n[2])])
        out += block * w
    return out


def _hermite_bridge(values: np.ndarray, axis: int, keep: int) -> None:
    """Replace samples ``keep+1 .. M-1`` along ``axis`` by the cubic Hermite curve from sample ``keep`` to the
    periodic continuation (sample ``M`` = sample 0), matching values and (one-sided) slopes: the periodic
    extension is then C1, so its trigonometric interpolation does not ring (Gibbs) inside the volume."""
    m = values.shape[axis]
    n_bridge = m - 1 - keep
    if n_bridge < 1 or keep < 1 or m < 3:
        return
    v = np.moveaxis(values, axis, 0)
    span = float(m - keep)  # samples from `keep` to the wrapped sample 0
    v0, v1 = v[keep].astype(np.float64), v[0].astype(np.float64)
    d0 = (v[keep] - v[keep - 1]) * span  # slopes per unit of the bridge parameter t
    d1 = (v[1] - v[0]) * span
    for j in range(keep + 1, m):
        t = (j - keep) / span
        h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
        v[j] = h00 * v0 + h10 * d0 + h01 * v1 + h11 * d1


class LongRangePhotons:
    """The long-range photon dose of a nuclide on a grid (see the module docstring).

    Parameters
    ----------
    nuclide
        Nuclide name (ICRP-107).
    voxel_mm
        Fine voxel size (x, y, z), mm.
    split_mm
        Split length ``s`` of the photon kernel (default :func:`split_length_mm`); the fine kernel must be built
        with the same ``photon_split_mm``.
    """

    def __init__(self, nuclide: str, voxel_mm: tuple[float, float, float], split_mm: float | None = None) -> None:
        from ..nuclides import get

        self.nuclide = get(nuclide).name
        self.voxel_zyx = (float(voxel_mm[2]), float(voxel_mm[1]), float(voxel_mm[0]))
        self.split_mm = float(split_mm) if split_mm is not None else split_length_mm(voxel_mm)
        self.coarse_mm = self.split_mm * _COARSE_VOXELS / _SPLIT_BALANCE

    # -- fast path: inside the fine FFT ------------------------------------------------------------------------
    def _coarse_sizes(self, padded: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        # at most P/3 samples per axis, so that the first aliases fit in the fine half-spectrum
        m = tuple(min(max(3, p // 3), max(3, math.ceil(p * h / self.coarse_mm)))
                  for p, h in zip(padded, self.voxel_zyx, strict=True))
        spacing = tuple(p * h / mm for p, h, mm in zip(padded, self.voxel_zyx, m, strict=True))
        return m, spacing  # type: ignore[return-value]

    def spectral(self, spec: np.ndarray, padded: tuple[int, int, int], shape: tuple[int, int, int],
                 workers: int | None = None) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Long-range dose spectrum from the fine TIA spectrum ``spec`` (``rfftn`` of the zero-padded TIA map on
        the grid ``padded``; the map occupies the first ``shape`` voxels). Returns the bins of the fine spectrum
        and the values to add there after the short-range kernel was applied (:meth:`add_to`)."""
        m, spacing = self._coarse_sizes(padded)
        sigma = _ASSIGN_SIGMA_PER_COARSE * max(spacing)
        folded = _gaussian_assignment(spec, padded, m, self.voxel_zyx, sigma)
        ratio = float(np.prod(m)) / float(np.prod(padded))
        # Gaussian-blurred TIA at the coarse points x_j = j P/M (fine-voxel units), Bq h/mL
        tia_c = scipy.fft.irfftn(folded, s=m, workers=workers) * np.float32(ratio)
        # the Gaussian tails of sources at the first face wrap around to the end of the period: samples past the
        # middle of the padding belong before the first face (negative positions) in the linear convolution
        lead = tuple(int(m[a] - 1 - math.floor((shape[a] - 1 + padded[a]) / 2.0 * m[a] / padded[a])) for a in range(3))
        dose_c = self._convolve(tia_c, spacing, sigma, workers, lead=lead)  # type: ignore[arg-type]
        # samples beyond the volume (plus one) are free: bridge them to the periodic continuation
        for axis in range(3):
            last_inside = int(math.floor((shape[axis] - 1) * m[axis] / padded[axis]))
            _hermite_bridge(dose_c, axis, min(m[axis] - 2, last_inside + 1))
        out = scipy.fft.rfftn(dose_c, workers=workers) * np.float32(1.0 / ratio)
        _zero_nyquist(out, m)
        idx = (_low_indices(padded[0], m[0]), _low_indices(padded[1], m[1]), np.arange(m[2] // 2 + 1))
        return idx, out.astype(spec.dtype, copy=False)

    @staticmethod
    def add_to(spec: np.ndarray, part: tuple[tuple[np.ndarray, ...], np.ndarray]) -> None:
        """Add the output of :meth:`spectral` to the fine dose spectrum (in place)."""
        idx, values = part
        spec[np.ix_(*idx)] += values

    # -- shared coarse convolution ------------------------------------------------------------------------------
    def _convolve(self, tia_c: np.ndarray, spacing_zyx: tuple[float, float, float], sigma_mm: float,
                  workers: int | None, lead: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """Linear convolution of coarse samples with the coarse kernel; the last ``lead`` samples of each axis
        are sources at negative positions (-lead .. -1), the output is at positions 0 .. M-1."""
        m = tia_c.shape
        # room for |d| < M + lead plus a margin, so that the deconvolution's ringing at the torus' far side stays out
        q = tuple(scipy.fft.next_fast_len(2 * n + 4 + 2 * ld, real=True) for n, ld in zip(m, lead, strict=True))
        kspec = _coarse_kernel_spectrum(self.nuclide, tuple(round(s, 6) for s in spacing_zyx),
                                        m, q, round(self.split_mm, 6), round(sigma_mm, 6))
        buf = np.zeros(q, np.float32)
        buf[: m[0], : m[1], : m[2]] = np.roll(tia_c, lead, axis=(0, 1, 2)) if any(lead) else tia_c
        spec = scipy.fft.rfftn(buf, workers=workers)
        spec *= kspec
        out = scipy.fft.irfftn(spec, s=q, workers=workers)
        return out[lead[0]: lead[0] + m[0], lead[1]: lead[1] + m[1], lead[2]: lead[2] + m[2]].astype(np.float32)

    # -- real-space path ---------------------------------------------------------------------------------------
    def real_space(self, tia_Bq_h_per_mL: np.ndarray, workers: int | None = None) -> np.ndarray:
        """Long-range dose (Gy, water) on the fine grid by block means, coarse convolution and trilinear
        interpolation (for overlap-add slabs and the multi-kernel density method)."""
        a = np.asarray(tia_Bq_h_per_mL, dtype=np.float32)
        # half the spectral path's spacing: block means and trilinear interpolation are only second-order
        # accurate (within 1.5 % of the long-range dose on a body phantom, vs 10 % at the full spacing)
        f = [max(1, int(round(0.5 * self.coarse_mm / h))) for h in self.voxel_zyx]
        shape = a.shape
        m = tuple(math.ceil(n / k) for n, k in zip(shape, f, strict=True))
        padded = np.zeros(tuple(mm * k for mm, k in zip(m, f, strict=True)), np.float32)
        padded[: shape[0], : shape[1], : shape[2]] = a
        coarse = padded.reshape(m[0], f[0], m[1], f[1], m[2], f[2]).mean(axis=(1, 3, 5), dtype=np.float32)
        del padded
        spacing = tuple(k * h for k, h in zip(f, self.voxel_zyx, strict=True))
        dose_c = self._convolve(coarse, spacing, 0.0, workers)  # type: ignore[arg-type]
        out = dose_c
        for axis in range(3):
            # coarse sample j sits at fine index f j + (f - 1)/2
            pos = (np.arange(shape[axis]) - (f[axis] - 1) / 2.0) / f[axis]
            pos = np.clip(pos, 0.0, m[axis] - 1)
            i0 = np.minimum(np.floor(pos).astype(np.intp), m[axis] - 2) if m[axis] > 1 else np.zeros(shape[axis], np.intp)
            w1 = (pos - i0).astype(np.float32) if m[axis] > 1 else np.zeros(shape[axis], np.float32)
            i1 = np.minimum(i0 + 1, m[axis] - 1)
            bshape = [1, 1, 1]
            bshape[axis] = -1
            w1b = w1.reshape(bshape)
            out = np.take(out, i0, axis=axis) * (1.0 - w1b) + np.take(out, i1, axis=axis) * w1b
        return out.astype(np.float32)
