"""What every figure shares: `style` (palette, titles, atomic png+pdf saving) and `overlay`
(the depth axis and run styles of sweep comparisons). Each experiment draws its own figures in
its folder (`laminae.experiments.<name>.figures`)."""
