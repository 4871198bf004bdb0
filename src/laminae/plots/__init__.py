"""Figures. `style` holds what every figure shares; one module per experiment."""
