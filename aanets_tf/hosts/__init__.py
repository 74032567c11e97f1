"""Class-incremental host methods (LUCIR, iCaRL, PODNet) and their building blocks."""
