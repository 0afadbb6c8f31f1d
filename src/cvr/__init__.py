"""cvr: conversion-rate prediction with field-aware factorization machines."""

__version__ = "0.1.0"
